"""DIR/index.html: one self-contained page (images, GIFs and charts inline) for a demo folder."""

from __future__ import annotations

import html
import os
import time
from pathlib import Path

from vq3d.report import sections
from vq3d.utils.io import atomic_write_text

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:24px auto;
padding:0 16px;color:#222;line-height:1.45}
h1{margin-bottom:4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px}
nav a{margin-right:12px} code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;white-space:pre-wrap}
table.metrics{border-collapse:collapse;margin:8px 0}
table.metrics td,table.metrics th{border:1px solid #ddd;padding:4px 10px;text-align:left}
table.metrics td{font-variant-numeric:tabular-nums}
.row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.pair{display:flex;flex-direction:column;gap:2px}
figure{margin:0} figcaption{font-size:12px;color:#555;max-width:260px}
img.px{image-rendering:pixelated;image-rendering:crisp-edges;background:#eee}
.missing{color:#a33;font-style:italic} .good{color:#176f2c;font-weight:600} .bad{color:#a33;font-weight:600}
h3{margin:18px 0 4px;font-size:16px}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px}
svg.chart{font-size:11px;background:#fff} svg.chart .title{font-size:13px;font-weight:600}
"""

# (anchor, heading, section builder); the last two take the phase list
SECTIONS = [
    ("metrics", "Metrics on held-out scenes", sections.metrics_section),
    ("generation-metrics", "Generation metrics", sections.generation_section),
    ("not-measured", "Not measured", sections.not_measured_section),
    ("radius", "Metrics vs sampling radius", sections.radius_section),
    ("reconstructions", "Reconstructions of held-out scenes", sections.reconstructions_section),
    ("generated", "Generated scenes (class-conditional)", sections.generated_section),
    ("curves", "Training curves", sections.curves_section),
    ("data", "Dataset", sections.data_section),
]


def _summary(root: Path) -> str:
    """What ran, for how long, and what the numbers can and cannot say."""
    state = sections.read_json(root / "demo.json") or {}
    s = state.get("settings", {})
    s1 = (sections.read_json(root / "phases" / "stage1.json") or {}).get("result", {})
    s2 = (sections.read_json(root / "phases" / "stage2.json") or {}).get("result", {})
    trained = ""
    if s1:
        trained = (f" Stage 1 trained for {s1.get('steps', '?')} steps (budget "
                   f"{s1.get('budget_minutes', '?')} min, stopped by {s1.get('stop_reason', '?')})")
        if s2:
            trained += (f", Stage 2 for {s2.get('steps', '?')} steps (budget {s2.get('budget_minutes', '?')} "
                        f"min, stopped by {s2.get('stop_reason', '?')})")
        trained += "."
    return (f"<p>Preset <code>{html.escape(str(s.get('preset', '?')))}</code>, {s.get('n_scenes', '?')} "
            f"synthetic scenes at {s.get('resolution', '?')} px, time budget {s.get('minutes', '?')} min on "
            f"{os.cpu_count()} CPU core(s) (torch threads: {state.get('torch_threads', '?')}, torch "
            f"{html.escape(str(state.get('torch_version', '?')))}).{html.escape(trained)}</p>"
            '<p class="note">A demo of the whole pipeline in minutes on a CPU, not a converged model: '
            "the paper trains at 256 px for hundreds of thousands of steps on accelerators. Every number "
            "below is measured on scenes held out from training, beside a baseline that needs no model, so "
            "it shows what these minutes bought, including where the baseline still wins.</p>")


def build_report(root: str | Path, log_lines: list[str] | None = None,
                 phases: list[tuple[str, str]] | None = None) -> Path:
    """Write `root`/index.html from whatever the demo folder holds; returns its path.

    `phases`: (name, title) in run order for the timing and command tables (default: the demo's
    phases); `log_lines`: the progress lines of this run, shown at the end.
    """
    root = Path(root)
    if phases is None:
        from vq3d.demo.optional import OPTIONAL_PHASES
        from vq3d.demo.run import CORE_PHASES

        phases = CORE_PHASES + [(n, t) for n, (t, _) in OPTIONAL_PHASES.items()]
    parts = [(anchor, title, build(root)) for anchor, title, build in SECTIONS]
    parts += [("timing", "Time per phase", sections.timing_section(root, phases)),
              ("commands", "Commands", "<p>The <code>vq3d</code> command lines equivalent to each phase "
               "(paths as this demo ran them).</p>" + sections.commands_section(root, phases)),
              ("config", "Config", sections.config_section(root))]
    if log_lines:
        parts.append(("log", "Progress log", f"<pre>{html.escape(chr(10).join(log_lines))}</pre>"))
    nav = " ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in parts)
    body = "".join(f'<section id="{a}"><h2>{html.escape(t)}</h2>{content}</section>'
                   for a, t, content in parts)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vq3d demo</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style>'
            f"</head><body><h1>vq3d demo</h1><p>VQ3D (3D-aware VQ autoencoder + GPT) on the built-in "
            f"synthetic 3D benchmark; page written {stamp}.</p>{_summary(root)}<nav>{nav}</nav>{body}"
            "</body></html>\n")
    path = root / "index.html"
    atomic_write_text(path, page)
    return path
