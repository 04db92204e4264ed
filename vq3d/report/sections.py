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

TILE = 128  # display height (px) of one rendered tile

# (label, model key, baseline key, what is better); the baseline is "copy the input"
STAGE1_ROWS = [
    ("Novel-view PSNR (dB)", "novel_view_psnr", "copy_baseline_psnr", "higher"),
    ("Novel-view SSIM", "novel_view_ssim", "copy_baseline_ssim", "higher"),
    ("Novel-view LPIPS", "novel_view_lpips", "copy_baseline_lpips", "lower"),
    ("Reconstruction PSNR, canonical view (dB)", "psnr", None, "higher"),
    ("Reconstruction SSIM, canonical view", "ssim", None, "higher"),
    ("Reconstruction LPIPS, canonical view", "lpips", None, "lower"),
    ("Depth accuracy, canonical view (paper's metric)", "depth_accuracy", None, "lower"),
    ("Depth accuracy, novel views", "novel_depth_accuracy", None, "lower"),
    ("Disparity scale s* (Eq. 1)", "disparity_scale", None, "near 1"),
    ("Codebook usage (fraction of codes)", "codebook_usage", None, "higher"),
]
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


def _verdict(model: float, baseline: float, better: str) -> str:
    if not (math.isfinite(model) and math.isfinite(baseline)):
        return ""
    wins = model > baseline if better == "higher" else model < baseline
    return '<span class="good">model better</span>' if wins else '<span class="bad">baseline better</span>'


def stage2_summary(root: Path) -> tuple[float | None, float | None]:
    """(last validation bits per token, unigram entropy of the training tokens) of DIR/stage2."""
    from vq3d.train.logger import read_metrics

    val = [r["val_bits_per_token"] for r in read_metrics(root / "stage2") if "val_bits_per_token" in r]
    meta = read_json(root / "stage2" / "stage2.json") or {}
    return (val[-1] if val else None), meta.get("unigram_entropy_bits")


def metrics_section(root: Path) -> str:
    """Held-out Stage-1 metrics beside the copy-the-input baseline, and Stage 2 beside unigram."""
    metrics = read_json(root / "eval" / "stage1.json")
    if metrics is None:
        return missing("Stage 1 has not been evaluated yet.", "eval/stage1.json")
    rows = []
    shown = {"scenes", "skipped"}
    for label, key, base_key, better in STAGE1_ROWS:
        if key not in metrics:
            continue
        shown.update({key, base_key})
        base = metrics.get(base_key) if base_key else None
        verdict = _verdict(float(metrics[key]), float(base), better) if base is not None else ""
        rows.append(f"<tr><td>{esc(label)}</td><td>{fmt(metrics[key])}</td>"
                    f"<td>{fmt(base) if base is not None else '&mdash;'}</td>"
                    f"<td>{'copy the input' if base is not None else ''}</td><td>{esc(better)}</td>"
                    f"<td>{verdict}</td></tr>")
    for key, value in metrics.items():
        if key not in shown and isinstance(value, (int, float)):
            rows.append(f"<tr><td>{esc(key)}</td><td>{fmt(value)}</td><td>&mdash;</td><td></td><td></td><td></td></tr>")
    bits, unigram = stage2_summary(root)
    if bits is not None:
        verdict = _verdict(bits, unigram, "lower") if unigram is not None else ""
        rows.append(f"<tr><td>Stage 2: validation bits per token</td><td>{fmt(bits)}</td>"
                    f"<td>{fmt(unigram) if unigram is not None else '&mdash;'}</td>"
                    f"<td>unigram entropy (ignores context)</td><td>lower</td><td>{verdict}</td></tr>")
    skipped = metrics.get("skipped") or {}
    notes = "".join(f"<li><code>{esc(k)}</code>: {esc(str(v))}</li>" for k, v in skipped.items())
    return (f'<p>{fmt(metrics.get("scenes", "?"))} held-out synthetic scenes (never seen in training), each '
            "with ground-truth depth and novel views. The copy-the-input baseline scores the input image "
            "itself against every novel view: what a model without any 3D would get.</p>"
            '<table class="metrics"><tr><th>metric</th><th>model</th><th>baseline</th><th>baseline is</th>'
            f'<th>better</th><th></th></tr>{"".join(rows)}</table>'
            + (f"<p>Not measured:</p><ul>{notes}</ul>" if notes else ""))


def _not_run(root: Path, phase: str, module: str) -> str:
    """Why an optional phase has no result: skipped for time, or its module is missing."""
    skipped = read_json(root / "phases" / f"{phase}.skipped.json")
    if skipped is not None:
        return f"Not run: {skipped['reason']}."
    return f"Not run ({module} was not available to this demo, or the phase has not run yet)."


def generation_section(root: Path) -> str:
    """DIR/eval/generation.json (vq3d eval generation) as a table."""
    metrics = read_json(root / "eval" / "generation.json")
    if metrics is None:
        return missing(_not_run(root, "eval_generation", "vq3d.eval.generation"), "eval/generation.json")
    rows = "".join(f"<tr><td><code>{esc(k)}</code></td><td>{fmt(v)}</td></tr>" for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool))
    skipped = metrics.get("skipped") or {}
    notes = "".join(f"<li><code>{esc(k)}</code>: {esc(str(v))}</li>" for k, v in skipped.items())
    return (f'<table class="metrics"><tr><th>metric</th><th>value</th></tr>{rows}</table>'
            + (f"<p>Not measured:</p><ul>{notes}</ul>" if notes else ""))


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
            f'{"".join(rows)}<tr><th>all phases</th><th>{_mmss(total)}</th><th></th><th></th></tr></table>')


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
