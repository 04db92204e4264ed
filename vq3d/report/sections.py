"""The demo page's sections, each read from the demo folder (`vq3d.demo.state.DemoLayout`).

Every function returns an HTML fragment; a missing input gives a visible note, not an error, so a
page can be built from a demo that has not finished.
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path
from typing import Any

from vq3d.report.charts import Series, line_chart, running_mean
from vq3d.report.embed import figure, img
from vq3d.report.metric_names import GROUP_TITLES, STAGE1_ORDER, MetricInfo, describe

TILE = 128  # display height (px) of one rendered tile

esc = html.escape


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return esc(str(value))


def missing(text: str, marker: str) -> str:
    """A visible note where a result is absent, with a comment naming the file it would come from."""
    return f'<!-- {marker} --><p class="missing">{esc(text)}</p>'


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(metrics: dict[str, Any], key: str | None) -> float | None:
    """metrics[key] as a float, None when the key is unset, absent or not a number."""
    value = metrics.get(key) if key else None
    return float(value) if _is_number(value) else None


def _cell(value: float | None) -> str:
    return fmt(value) if value is not None else "&mdash;"


def _name(info: MetricInfo) -> str:
    # an unknown key shows as itself, so a reader can still grep for it
    return esc(info.name) if info.known else f"<code>{esc(info.key)}</code>"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """A metrics table; headers are plain text, cells HTML already escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="metrics"><tr>{head}</tr>{body}</table>'


def _verdict(model: float, baseline: float, better: str) -> str:
    if not (math.isfinite(model) and math.isfinite(baseline)):
        return ""
    if better == "near 1":
        wins = abs(model - 1) < abs(baseline - 1)
    else:
        wins = model > baseline if better == "higher" else model < baseline
    return '<span class="good">model better</span>' if wins else '<span class="bad">baseline better</span>'


def warp_gain_share(model: float, copy: float, warp: float) -> float | None:
    """(model - copy) / (warp - copy): the share of the gain that exact geometry brings over copying
    the input which the model reached (0 = no better than copying, 1 = as good as the true-depth
    warp). None when the baselines tie (there is no gain to share) or a value is not finite."""
    if not all(math.isfinite(v) for v in (model, copy, warp)):
        return None
    if math.isclose(warp, copy, rel_tol=1e-9, abs_tol=1e-12):
        return None
    return (model - copy) / (warp - copy)


def _percent(share: float | None) -> str:
    return "&mdash;" if share is None else f"{100 * share:.1f}%"


def stage2_summary(root: Path) -> tuple[float | None, float | None]:
    """(last validation bits per token, unigram entropy of the training tokens) of DIR/stage2."""
    from vq3d.train.logger import read_metrics

    val = [r["val_bits_per_token"] for r in read_metrics(root / "stage2") if "val_bits_per_token" in r]
    meta = read_json(root / "stage2" / "stage2.json") or {}
    return (val[-1] if val else None), meta.get("unigram_entropy_bits")


def _stage1_row(info: MetricInfo, metrics: dict[str, Any]) -> list[str]:
    """One Stage-1 metric beside its copy and warp baselines (a dash where it has none)."""
    model = float(metrics[info.key])
    copy, warp = _number(metrics, info.copy_key), _number(metrics, info.warp_key)
    share = warp_gain_share(model, copy, warp) if copy is not None and warp is not None else None
    verdict = _verdict(model, copy, info.better) if copy is not None and info.better else ""
    return [_name(info), fmt(model), _cell(copy), _cell(warp), _percent(share), esc(info.better or ""),
            verdict, esc(info.meaning)]


def _stage1_infos(metrics: dict[str, Any]) -> list[MetricInfo]:
    """The rows of the Stage-1 table: known metrics in their order, then any other number as it comes;
    a baseline shown beside its metric gets no row of its own."""
    keys = [k for k in STAGE1_ORDER if k in metrics]
    keys += [k for k, v in metrics.items() if k not in keys and _is_number(v)]
    infos = [describe(k) for k in keys if _is_number(metrics[k])]
    beside = {k for info in infos for k in (info.copy_key, info.warp_key) if k in metrics}
    return [info for info in infos if info.key not in beside and info.group != "run"]


def _stage2_table(root: Path) -> str:
    """Stage 2's validation bits per token beside the unigram entropy (a model without context)."""
    bits, unigram = stage2_summary(root)
    if bits is None:
        return ""
    info, base = describe("val_bits_per_token"), describe("unigram_entropy_bits")
    verdict = _verdict(bits, unigram, "lower") if unigram is not None else ""
    row = [_name(info), fmt(bits), _cell(unigram), esc(info.better or ""), verdict, esc(info.meaning)]
    return (f"<h3>{esc(GROUP_TITLES['stage2'])}</h3>"
            + _table(["metric", "model", f"baseline: {base.name.lower()}", "better", "", "what it measures"],
                     [row]))


def metrics_section(root: Path) -> str:
    """Held-out Stage-1 metrics beside the copy-the-input and true-geometry warp baselines, and
    Stage 2 beside unigram."""
    metrics = read_json(root / "eval" / "stage1.json")
    if metrics is None:
        return missing("Stage 1 has not been evaluated yet.", "eval/stage1.json")
    rows = [_stage1_row(info, metrics) for info in _stage1_infos(metrics)]
    headers = ["metric", "model", "copy the input", "true-geometry warp", "share of the warp's gain reached",
               "better", "model vs copy", "what it measures"]
    return (f'<p>{fmt(metrics.get("scenes", "?"))} held-out synthetic scenes (never seen in training), each '
            "with ground-truth depth and novel views. Two baselines need no model: copying the input "
            "image scores it against every novel view (what a model without 3D gets); the true-geometry "
            "warp moves the input's pixels to each novel view by the true depth (exact geometry, nothing "
            "invented where the input does not see). The share of the warp's gain reached is "
            "(model &minus; copy) / (warp &minus; copy): 0% is no better than copying, 100% as good as "
            "the exact warp.</p>" + _table(headers, rows) + _stage2_table(root))


def _not_run(root: Path, phase: str, module: str) -> str:
    """Why an optional phase has no result: skipped for time, or its module is missing."""
    skipped = read_json(root / "phases" / f"{phase}.skipped.json")
    if skipped is not None:
        return f"Not run: {skipped['reason']}."
    return f"Not run ({module} was not available to this demo, or the phase has not run yet)."


def _with_spread(metrics: dict[str, Any], key: str) -> str:
    """The value, with its `_std` beside it when the evaluator wrote one (IS, KID)."""
    spread = _number(metrics, f"{key}_std")
    return fmt(metrics[key]) + (f" &plusmn; {fmt(spread)}" if spread is not None else "")


def _group_table(infos: list[MetricInfo], metrics: dict[str, Any], value_header: str) -> str:
    """One stage's generation metrics; a reference column where any of them has a reference value."""
    references = [_number(metrics, info.reference_key) for info in infos]
    with_reference = any(r is not None for r in references)
    headers = ["metric", value_header] + (["Stage 1 reconstructions (reference)"] if with_reference else [])
    rows = []
    for info, reference in zip(infos, references):
        row = [_name(info), _with_spread(metrics, info.key)] + ([_cell(reference)] if with_reference else [])
        rows.append(row + [esc(info.better or ""), esc(info.meaning)])
    return _table(headers + ["better", "what it measures"], rows)


def _generation_groups(metrics: dict[str, Any]) -> dict[str, list[MetricInfo]]:
    """The numbers of generation.json by group; a `_std` goes beside its metric, not on a row."""
    groups: dict[str, list[MetricInfo]] = {}
    for key, value in metrics.items():
        beside_its_metric = key.endswith("_std") and _number(metrics, key.removesuffix("_std")) is not None
        if not _is_number(value) or beside_its_metric:
            continue
        info = describe(key)
        groups.setdefault(info.group, []).append(info)
    # counts (no better direction) first, then the scores in the order the evaluator wrote them
    return {group: sorted(infos, key=lambda info: info.better is not None) for group, infos in groups.items()}


def generation_section(root: Path) -> str:
    """DIR/eval/generation.json (vq3d eval generation): Stage 1 reconstructions and Stage 2 samples,
    each metric named, with Stage 1's value beside Stage 2's as its reference."""
    metrics = read_json(root / "eval" / "generation.json")
    if metrics is None:
        return missing(_not_run(root, "eval_generation", "vq3d.eval.generation"), "eval/generation.json")
    groups = _generation_groups(metrics)
    about = "; ".join(f"{esc(info.name)}: {fmt(metrics[info.key])}" for info in groups.pop("run", []))
    parts = ["<p>Stage 1 reconstructs held-out real images (the paper's FID-S1); Stage 2 samples new scenes "
             "that Stage 1 decodes (FID-S2), so the reconstructions' value of the same measure is the "
             f"reference a sample can at best reach.{' ' + about + '.' if about else ''}</p>"]
    value_headers = {"s1": "reconstructions", "s2": "samples"}
    for group in sorted(groups, key=lambda g: list(GROUP_TITLES).index(g)):
        parts.append(f"<h3>{esc(GROUP_TITLES[group])}</h3>"
                     + _group_table(groups[group], metrics, value_headers.get(group, "value")))
    return "".join(parts)


def merged_skips(skipped: list[dict[str, str]]) -> dict[str, list[str]]:
    """{reason: human names of the metrics it kept from being measured}, over several evaluations'
    `skipped` dicts: a reason two evaluations share (no weights, say) is listed once."""
    by_reason: dict[str, list[str]] = {}
    for entries in skipped:
        for key, reason in entries.items():
            names = by_reason.setdefault(str(reason), [])
            label = describe(key).label
            if label not in names:
                names.append(label)
    return by_reason


def not_measured_section(root: Path) -> str:
    """What eval/stage1.json and eval/generation.json skipped: each reason, which says what would
    measure it, once, with the metrics it affects."""
    results = [read_json(root / "eval" / name) for name in ("stage1.json", "generation.json")]
    evaluated = [r for r in results if r is not None]
    if not evaluated:
        return missing("Nothing has been evaluated yet.", "eval/stage1.json, eval/generation.json")
    by_reason = merged_skips([r.get("skipped") or {} for r in evaluated])
    if not by_reason:
        return "<p>Every metric of the evaluations that ran was measured.</p>"
    items = "".join(f"<li>{'; '.join(f'<b>{esc(n)}</b>' for n in names)} &mdash; {esc(reason)}</li>"
                    for reason, names in by_reason.items())
    return f'<ul class="skipped">{items}</ul>'


def radius_section(root: Path) -> str:
    """DIR/eval/radius/radius.csv (vq3d eval radius) as a table, with its PNG plots."""
    folder = root / "eval" / "radius"
    path = folder / "radius.csv"
    if not path.is_file():
        return missing(_not_run(root, "eval_radius", "vq3d.eval.radius"), "eval/radius/radius.csv")
    with open(path, newline="") as f:
        table = list(csv.reader(f))
    head = "".join(f"<th>{esc(c)}</th>" for c in table[0]) if table else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in table[1:])
    plots = "".join(figure(p, p.stem.replace("_", " "), 300, pixelated=False)
                    for p in sorted(folder.glob("*.png")))
    return f'<table class="metrics"><tr>{head}</tr>{body}</table><div class="row">{plots}</div>'


def reconstructions_section(root: Path) -> str:
    """Each held-out scene: input, reconstruction, depth vs ground truth, novel views vs ground truth."""
    held = read_json(root / "reconstructions" / "heldout.json")
    if held is None:
        return missing("No held-out reconstructions yet.", "reconstructions/heldout.json")
    blocks = []
    for scene in held["scenes"]:
        folder = root / "reconstructions" / scene["folder"]
        gt = folder / "gt_compare"
        top = [figure(gt / "input.png", "input", TILE),
               figure(gt / "reconstruction.png", f"reconstruction ({scene['psnr']:.1f} dB)", TILE),
               figure(gt / "depth_model.png", "depth (model)", TILE),
               figure(gt / "depth_gt.png", "depth (ground truth)", TILE),
               figure(folder / "orbit.gif", "orbit: RGB | depth", TILE)]
        views = []
        for k, (ours, copy) in enumerate(zip(scene["novel_psnr"], scene["copy_psnr"])):
            views.append('<div class="pair">'
                         + figure(gt / f"novel_{k}_model.png", f"view {k}: model {ours:.1f} dB", TILE)
                         + figure(gt / f"novel_{k}_gt.png", f"view {k}: truth (copy {copy:.1f} dB)", TILE)
                         + "</div>")
        blocks.append(f'<h3>Scene {scene["scene"]} ({esc(scene["class_name"])})</h3>'
                      f'<div class="row">{"".join(top)}</div><div class="row">{"".join(views)}</div>')
    return ("<p>Held-out scenes reconstructed in one forward pass from the input image alone, then rendered "
            "at the dataset's novel cameras next to the ground-truth views. Depth maps show disparity, each "
            "min-max normalized (near is red). \"copy\" is the PSNR of the input image against that view.</p>"
            + "".join(blocks))


def generated_section(root: Path) -> str:
    """Orbit GIFs (RGB | depth) of the class-conditional samples, by class."""
    gen = read_json(root / "generated" / "generated.json")
    if gen is None:
        return missing("No generated scenes yet.", "generated/generated.json")
    gifs = []
    for cls in gen["classes"]:
        folder = root / "generated" / cls["folder"]
        gifs += [figure(folder / s / "orbit.gif", f"{cls['class_name']} #{i}", TILE)
                 for i, s in enumerate(cls["samples"])]
    return ("<p>New scenes sampled from Stage 2 given the class named under each, decoded to triplanes by "
            "Stage 1 and rendered along an orbit on the rim of the novel-view disc (left RGB, right "
            f'disparity).</p><div class="row">{"".join(gifs)}</div>')


def curves_section(root: Path) -> str:
    """Training curves of both stages from their metrics.jsonl."""
    from vq3d.train.logger import read_metrics

    s1 = read_metrics(root / "stage1")
    s2 = read_metrics(root / "stage2")
    charts = []

    def column(records: list[dict], key: str) -> tuple[list[float], list[float]]:
        rows = [(r["step"], r[key]) for r in records if key in r]
        return [a for a, _ in rows], [b for _, b in rows]

    if s1:
        steps, loss = column(s1, "loss")
        charts.append(line_chart(_with_mean("loss", steps, loss), "Stage 1: total loss (Eq. 4)", "step",
                                 "loss"))
        steps, mse = column(s1, "mse")
        train_psnr = [10 * math.log10(4.0 / m) if m > 0 else float("nan") for m in mse]  # images in [-1, 1]
        charts.append(line_chart(_with_mean("train PSNR", steps, train_psnr),
                                 "Stage 1: canonical reconstruction PSNR (train batches)", "step", "dB"))
        extra = [Series(key, *column(s1, key)) for key in ("depth", "scale", "codebook_usage")
                 if column(s1, key)[0]]
        if extra:
            charts.append(line_chart(extra, "Stage 1: depth and scale losses, codebook usage", "step",
                                     "value"))
    if s2:
        steps, bits = column(s2, "bits_per_token")
        series = [Series("train", steps, bits), Series("validation", *column(s2, "val_bits_per_token"))]
        _, unigram = stage2_summary(root)
        if unigram is not None and steps:
            series.append(Series("unigram entropy", [steps[0], steps[-1]], [unigram, unigram], dashed=True,
                                 color="#666"))
        charts.append(line_chart(series, "Stage 2: bits per token", "step", "bits"))
    if not charts:
        return missing("No training has been logged yet.", "stage1/metrics.jsonl")
    return f'<div class="row">{"".join(charts)}</div>'


def _with_mean(name: str, steps: list[float], values: list[float]) -> list[Series]:
    """The logged values (grey) and, when there are many, their running mean over 1/20 of them."""
    window = len(values) // 20
    if window < 2:
        return [Series(name, steps, values)]
    return [Series(name, steps, values, color="#bbb"),
            Series(f"mean of {window} logs", steps, running_mean(values, window))]


def timing_section(root: Path, names: list[tuple[str, str]]) -> str:
    """Each phase: its time, the plan's estimate or budget, and what it did."""
    state = read_json(root / "demo.json") or {}
    plan = state.get("plan", {})
    planned = {**plan.get("fixed_seconds", {}), **plan.get("training_seconds", {})}
    rows, total = [], 0.0
    before = state.get("seconds_before_start") or 0.0
    if before > 0:  # `make demo` counts its install against the minutes (--started-at)
        rows.append(f"<tr><td>before the demo (installing)</td><td>{_mmss(before)}</td><td></td>"
                    "<td>counted in the minutes (--started-at)</td></tr>")
        total += before
    for name, title in names:
        marker = read_json(root / "phases" / f"{name}.json")
        if marker is None:
            rows.append(f"<tr><td>{esc(title)}</td><td>&mdash;</td><td>{_mmss(planned.get(name))}</td>"
                        "<td>not run</td></tr>")
            continue
        total += marker["seconds"]
        result = marker.get("result", {})
        note = ", ".join(f"{k} {fmt(v)}" for k, v in list(result.items())[:6]
                         if isinstance(v, (int, float, str)) and k not in ("index", "file", "csv"))
        rows.append(f"<tr><td>{esc(title)}</td><td>{_mmss(marker['seconds'])}</td><td>{_mmss(planned.get(name))}"
                    f"</td><td>{note}</td></tr>")
    return ('<table class="metrics"><tr><th>phase</th><th>time (mm:ss)</th><th>planned</th>'
            '<th>result</th></tr>'
            f'{"".join(rows)}<tr><th>in all</th><th>{_mmss(total)}</th><th></th><th></th></tr></table>')


def _mmss(seconds: float | None) -> str:
    if seconds is None:
        return "&mdash;"
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def commands_section(root: Path, names: list[tuple[str, str]]) -> str:
    """The `vq3d` command lines equivalent to every phase, in order (DIR as run)."""
    state = read_json(root / "demo.json") or {}
    lines = [f"# this page: {state.get('command', 'vq3d demo')}"]
    for name, title in names:
        marker = read_json(root / "phases" / f"{name}.json")
        if marker and marker.get("commands"):
            lines.append(f"# {title}")
            lines.extend(marker["commands"])
    return f"<pre>{esc(chr(10).join(lines))}</pre>"


def config_section(root: Path) -> str:
    """The resolved YAML config each stage ran with."""
    parts = []
    for stage in ("stage1", "stage2"):
        path = root / stage / "config.yaml"
        text = path.read_text() if path.is_file() else "(not trained yet)"
        parts.append(f"<details open><summary>{stage}/config.yaml</summary><pre>{esc(text)}</pre></details>")
    return "".join(parts)


def data_section(root: Path) -> str:
    card = read_json(root / "data" / "dataset.json") or {}
    text = (f"{card.get('n_scenes', '?')} scenes ({card.get('n_train', '?')} train, "
            f"{card.get('n_test', '?')} held out) at {card.get('resolution', '?')}x"
            f"{card.get('resolution', '?')}, "
            f"{card.get('views', '?')} ground-truth novel views each; classes: "
            f"{', '.join(card.get('classes', []))}.")
    return f"<p>{esc(text)}</p>" + img(root / "contact_sheet.png", "contact sheet of the first scenes")
