"""The demo page reads by itself: every metric the evaluators write has a human name, a meaning
and a direction (`vq3d.report.metric_names`); the Stage-1 table puts the copy and warp baselines
beside the model with the share of the warp's gain reached; generation metrics are grouped by
stage; each reason for a skipped metric is listed once. Checked on hand-written demo folders (no
training), and in a real headless browser (Debian's chromium driven by Playwright; skipped with the
reason when either is missing)."""

from __future__ import annotations

import ast
import json
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest

import vq3d.eval.common as eval_common
from vq3d.eval import generation
from vq3d.report.metric_names import NO_DESCRIPTION, describe
from vq3d.report.page import build_report
from vq3d.report.sections import merged_skips, warp_gain_share

EVAL = Path(generation.__file__).parent
LPIPS_REASON = "no LPIPS weights: pass --lpips-vgg VGG16.pth --lpips-lin vgg.pth"
# written by the evaluators beside the metrics: paths and names, not numbers on the page
NOT_METRICS = {"skipped", "stage1", "stage2", "data", "split"}

STAGE1 = {"psnr": 21.5, "depth_accuracy": 0.41, "disparity_scale": 0.93, "object_depth_ratio": 1.07,
          "background_depth_ratio": 0.98, "novel_view_psnr": 14.3, "copy_baseline_psnr": 12.1,
          "warp_baseline_psnr": 19.7, "novel_depth_accuracy": 0.66, "codebook_usage": 0.31,
          "mystery_score": 2.5, "scenes": 4,
          "skipped": {"lpips": LPIPS_REASON, "novel_view_lpips": LPIPS_REASON,
                      "ssim": "SSIM's 11x11 window needs images of at least 11 px (these are 8)"}}
GENERATION = {"stage1": "s1run", "stage2": "s2run", "data": "data", "split": "test", "radius": 0.3,
              "real_images": 8, "s1_non_flatness": 3.2, "s1_depth_accuracy_gt": 0.4, "s1_images": 4,
              "s1_fd_domain_canonical": 10.5, "s1_fd_domain_novel": 12.5, "s1_class_accuracy": 0.8,
              "s2_non_flatness": 2.2, "s2_samples": 4, "s2_fd_domain": 20.0, "s2_class_accuracy": 0.6,
              "s2_is": 1.5, "s2_is_std": 0.1, "seconds": 3.5, "s2_brand_new": 7.0,
              # the same reason as Stage 1's LPIPS: must be listed once, naming the metrics of both
              "skipped": {"s1_fid_canonical": LPIPS_REASON,
                          "s2_fid": "no Inception weights: pass --inception"}}


# ----------------------------------------------------------------------------- helpers


def _demo(root: Path, stage1: dict | None = STAGE1, gen: dict | None = GENERATION) -> str:
    """A demo folder holding only the evaluations given; returns the page's HTML."""
    (root / "eval").mkdir(parents=True, exist_ok=True)
    for name, metrics in (("stage1.json", stage1), ("generation.json", gen)):
        if metrics is not None:
            (root / "eval" / name).write_text(json.dumps(metrics))
    return build_report(root, phases=[]).read_text()


class _Tables(HTMLParser):
    """Every <table> of one page section as rows of cell texts, and the texts of its <li>."""

    def __init__(self, section: str) -> None:
        super().__init__()
        self.section, self.inside, self.depth = section, False, 0
        self.tables: list[list[list[str]]] = []
        self.items: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self.inside = dict(attrs).get("id") == self.section
        elif self.inside and tag == "table":
            self.tables.append([])
        elif self.inside and tag == "tr":
            self.tables[-1].append([])
        elif self.inside and tag in ("td", "th", "li"):
            self._cell = []

    def handle_endtag(self, tag):
        if self.inside and tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif self.inside and tag == "li" and self._cell is not None:
            self.items.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "section":
            self.inside = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _section(page: str, anchor: str) -> _Tables:
    parsed = _Tables(anchor)
    parsed.feed(page)
    return parsed


def _rows(table: list[list[str]]) -> dict[str, dict[str, str]]:
    """{row label: {column header: cell}} of one table."""
    header, *body = table
    return {row[0]: dict(zip(header, row)) for row in body}


# ----------------------------------------------------------------------------- every key has a name


def _keys_of(node: ast.AST) -> list[str]:
    """The keys a string literal names: itself, or an f-string whose only field is the stage prefix
    (`f"{prefix}_non_flatness"`) once per stage."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        fields = [v.value for v in node.values if isinstance(v, ast.FormattedValue)]
        if fields and all(isinstance(f, ast.Name) and f.id in ("prefix", "p") for f in fields):
            return ["".join(stage if isinstance(v, ast.FormattedValue) else v.value for v in node.values)
                    for stage in ("s1", "s2")]
    return []


def _written_keys(path: Path) -> set[str]:
    """Every metric name an evaluator's source writes: `add("name", ...)`, `metrics["name"] = ...`,
    the keys of its result and skipped dicts, names looped over as `for name, ... in (("name", ...),)`
    and the names given to `_skip`."""
    keys: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args:
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if func == "add":
                keys.update(_keys_of(node.args[0]))
            if func == "_skip" and isinstance(node.args[1], ast.List):
                keys.update(k for elt in node.args[1].elts for k in _keys_of(elt))
            if func == "update" and getattr(node.func.value, "id", "") == "skipped":
                keys.update(k for d in node.args if isinstance(d, ast.Dict) for key in d.keys
                            for k in _keys_of(key))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Subscript) and getattr(target.value, "id", "") in (
                        "metrics", "result", "skipped"):
                    keys.update(_keys_of(target.slice))
                if getattr(target, "id", "") in ("result", "skipped") and node.value is not None:
                    keys.update(k for d in ast.walk(node.value) if isinstance(d, ast.Dict)
                                for key in d.keys if key is not None for k in _keys_of(key))
        elif isinstance(node, ast.For) and isinstance(node.target, ast.Tuple) and \
                getattr(node.target.elts[0], "id", "") == "name" and isinstance(node.iter, ast.Tuple):
            keys.update(k for pair in node.iter.elts if isinstance(pair, ast.Tuple)
                        for k in _keys_of(pair.elts[0]))
    return keys - NOT_METRICS


class _FakeSet:
    """Stands in for a FeatureSet: the distribution metrics' names, not their values, are tested."""

    def __len__(self) -> int:
        return 4

    def logits(self):
        return None

    def features(self):
        return None


def _distribution_keys(monkeypatch) -> set[str]:
    """The FID / FD / IS / KID names `generation._scores` gives, for each of its call sites."""
    monkeypatch.setattr(eval_common, "frechet_from", lambda fake, reference: 0.0)
    monkeypatch.setattr(eval_common, "inception_score", lambda logits, splits: (0.0, 0.0))
    monkeypatch.setattr(eval_common, "kid_from_features", lambda fake, real: (0.0, 0.0))
    keys: set[str] = set()
    for node in ast.walk(ast.parse(Path(generation.__file__).read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "_scores":
            prefix, views, is_kid_view = (ast.literal_eval(node.args[i]) for i in (0, 3, 4))
            sets = {(view, name): _FakeSet() for view in views for name in ("inception", "domain")}
            reference = SimpleNamespace(features=None)
            keys |= set(generation._scores(prefix, sets, {"inception": reference, "domain": reference}, views,
                                           is_kid_view, {}))
    return keys


def test_every_key_the_evaluators_write_has_a_human_name(monkeypatch):
    stage1_keys = _written_keys(EVAL / "stage1.py")
    generation_keys = _written_keys(EVAL / "generation.py") | _distribution_keys(monkeypatch)
    # the scan sees what the module docstrings promise (a scan that finds nothing would pass)
    assert {"novel_view_psnr", "copy_baseline_psnr", "warp_baseline_psnr", "object_depth_ratio",
            "novel_view_lpips", "codebook_usage", "scenes"} <= stage1_keys
    assert {"s1_fid_canonical", "s1_fd_domain_novel", "s2_fid", "s2_is_std", "s2_kid", "s2_class_accuracy",
            "s1_class_accuracy", "s2_disparity_scale_depth_model", "s1_depth_accuracy_gt", "s2_non_flatness",
            "real_images", "seconds", "radius", "s1_images", "s2_samples"} <= generation_keys
    nameless = sorted(k for k in stage1_keys | generation_keys if not describe(k).known)
    assert not nameless, f"give these a name in vq3d/report/metric_names.py: {nameless}"
    for key in stage1_keys | generation_keys:
        info = describe(key)
        assert info.name != key and info.meaning and info.meaning != NO_DESCRIPTION, key
        assert info.better in ("higher", "lower", "near 1", None), key


def test_scores_have_a_direction_and_their_baselines_and_references():
    assert describe("novel_view_psnr").better == "higher" and describe("novel_view_lpips").better == "lower"
    assert describe("object_depth_ratio").better == "near 1"
    assert describe("disparity_scale").better is None  # the truth's s* is the scene's, not 1
    psnr = describe("novel_view_psnr")
    assert (psnr.copy_key, psnr.warp_key) == ("copy_baseline_psnr", "warp_baseline_psnr")
    assert describe("novel_view_ssim").copy_key == "copy_baseline_ssim"
    assert describe("s2_fid").reference_key == "s1_fid_novel"
    assert describe("s2_fd_domain_canonical").reference_key == "s1_fd_domain_canonical"
    assert describe("s2_class_accuracy").reference_key == "s1_class_accuracy"
    assert (describe("s1_fid_novel").group, describe("s2_kid").group) == ("s1", "s2")


def test_an_unknown_key_keeps_its_raw_name():
    for key in ("mystery_score", "s2_brand_new", "s1_fid"):
        info = describe(key)
        assert not info.known and info.name == info.label == key and info.meaning == NO_DESCRIPTION


# ----------------------------------------------------------------------------- the page


def test_warp_gain_share_is_none_when_the_baselines_tie():
    assert warp_gain_share(15.0, 12.0, 18.0) == pytest.approx(0.5)
    assert warp_gain_share(0.3, 0.5, 0.1) == pytest.approx(0.5)  # lower-is-better measures alike
    assert warp_gain_share(15.0, 12.0, 12.0) is None
    assert warp_gain_share(15.0, float("nan"), 18.0) is None


def test_stage1_table_names_every_row_and_puts_both_baselines_beside_the_model(tmp_path):
    page = _demo(tmp_path)
    tables = _section(page, "metrics").tables
    rows = _rows(tables[0])
    assert "Novel-view PSNR (dB)" in rows and "Object depth ratio" in rows
    assert not {"warp_baseline_psnr", "copy_baseline_psnr", "True-geometry warp PSNR (dB)"} & set(rows)
    psnr = rows["Novel-view PSNR (dB)"]
    assert float(psnr["model"]) == pytest.approx(STAGE1["novel_view_psnr"])
    assert float(psnr["copy the input"]) == pytest.approx(STAGE1["copy_baseline_psnr"])
    assert float(psnr["true-geometry warp"]) == pytest.approx(STAGE1["warp_baseline_psnr"])
    model, copy, warp = (STAGE1[k] for k in ("novel_view_psnr", "copy_baseline_psnr", "warp_baseline_psnr"))
    share = psnr["share of the warp's gain reached"]
    assert share == f"{100 * (model - copy) / (warp - copy):.1f}%" == "28.9%"
    assert psnr["better"] == "higher" and psnr["what it measures"]
    assert rows["Object depth ratio"]["better"] == "near 1"
    assert rows["Object depth ratio"]["share of the warp's gain reached"] == "\u2014"
    # an unknown number still shows, under its raw key
    assert rows["mystery_score"]["what it measures"] == NO_DESCRIPTION
    assert float(rows["mystery_score"]["model"]) == 2.5


def test_share_of_the_warp_gain_is_a_dash_when_warp_equals_copy(tmp_path):
    page = _demo(tmp_path, {**STAGE1, "warp_baseline_psnr": STAGE1["copy_baseline_psnr"]}, None)
    psnr = _rows(_section(page, "metrics").tables[0])["Novel-view PSNR (dB)"]
    assert psnr["share of the warp's gain reached"] == "\u2014"


def test_generation_metrics_are_grouped_by_stage_with_stage1_as_reference(tmp_path):
    page = _demo(tmp_path)
    section = _section(page, "generation-metrics")
    assert "<h3>Stage 1 reconstructions</h3>" in page and "<h3>Stage 2 samples</h3>" in page
    s1, s2 = (_rows(t) for t in section.tables)
    assert set(s1) == {"Non-flatness (3DGP)", "Depth accuracy vs ground truth", "Images reconstructed",
                       "FD, domain features, canonical view", "FD, domain features, novel view",
                       "Class kept by reconstructions"}
    assert float(s2["FD, domain features, novel view"]["samples"]) == 20.0
    reference = "Stage 1 reconstructions (reference)"
    assert float(s2["FD, domain features, novel view"][reference]) == GENERATION["s1_fd_domain_novel"]
    assert float(s2["Class accuracy"][reference]) == GENERATION["s1_class_accuracy"]
    assert s2["Inception score"]["samples"] == "1.5 \u00b1 0.1"  # the spread beside it, not on a row
    # an unknown key still shows, in its stage's table, under its raw name
    assert s2["s2_brand_new"]["what it measures"] == NO_DESCRIPTION
    assert not any(label.startswith(("s1_", "s2_")) for label in {**s1, **s2} if label != "s2_brand_new")
    assert "Real images in the reference statistics: 8" in page


def test_a_reason_skipped_by_both_evaluators_is_listed_once(tmp_path):
    page = _demo(tmp_path)
    items = _section(page, "not-measured").items
    lpips = [item for item in items if LPIPS_REASON in item]
    assert len(lpips) == 1 and page.count(LPIPS_REASON) == 1
    for name in ("Reconstruction LPIPS, canonical view", "Novel-view LPIPS", "Stage 1: FID, canonical view"):
        assert name in lpips[0]
    assert len(items) == 3  # LPIPS, SSIM, Inception
    assert "skipped" not in _section(page, "metrics").tables[0][0]  # no list of its own any more
    assert merged_skips([{"a_key": "why"}, {"a_key": "why", "b_key": "why"}]) == {"why": ["a_key", "b_key"]}


def test_missing_evaluations_leave_visible_notes(tmp_path):
    page = _demo(tmp_path, None, None)
    assert "Stage 1 has not been evaluated yet." in page and "Nothing has been evaluated yet." in page
    assert '<!-- eval/generation.json --><p class="missing">Not run' in page
    page = _demo(tmp_path / "only-stage1", {**STAGE1, "skipped": {}}, None)
    assert "Every metric of the evaluations that ran was measured." in page


def test_html_in_keys_and_reasons_is_escaped(tmp_path):
    page = _demo(tmp_path, {"<b>x</b>": 1.0, "skipped": {"<i>k</i>": "<script>alert(1)</script>"}}, None)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<script>" not in page and "&lt;script&gt;" in page


# ----------------------------------------------------------------------------- the page in a browser


def test_browser_shows_human_names_the_warp_share_and_each_reason_once(browser, tmp_path):
    _demo(tmp_path)
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto((tmp_path / "index.html").as_uri())
    labels = page.locator("#metrics table.metrics tr td:first-child").all_inner_texts()
    assert "Novel-view PSNR (dB)" in labels and "Depth accuracy, novel views" in labels
    assert "warp_baseline_psnr" not in labels and "object_depth_ratio" not in labels
    headers = page.locator("#metrics table.metrics").first.locator("th").all_inner_texts()
    psnr_row = page.locator("#metrics table.metrics tr", has_text="Novel-view PSNR (dB)")
    row = psnr_row.locator("td").all_inner_texts()
    cells = dict(zip(headers, row))
    model, copy, warp = (STAGE1[k] for k in ("novel_view_psnr", "copy_baseline_psnr", "warp_baseline_psnr"))
    assert cells["share of the warp's gain reached"] == f"{100 * (model - copy) / (warp - copy):.1f}%"
    assert float(cells["true-geometry warp"]) == pytest.approx(warp)
    text = page.inner_text("body")
    for name in ("Stage 1 reconstructions", "Stage 2 samples", "Class kept by reconstructions",
                 "FD, domain features, novel view", "Object depth ratio"):
        assert name in text, name
    assert "s1_fd_domain_novel" not in text and "s2_class_accuracy" not in text
    reasons = page.locator("#not-measured li").all_inner_texts()
    assert sum(LPIPS_REASON in r for r in reasons) == 1 and text.count(LPIPS_REASON) == 1
    assert page.locator("#not-measured").is_visible()
    page.close()
