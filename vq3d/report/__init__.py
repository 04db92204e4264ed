"""The demo's result page: `build_report(DIR)` writes DIR/index.html, one self-contained file.

Modules: `page.py` (assembly, CSS, atomic write), `sections.py` (one function per section, each
reading the demo folder), `metric_names.py` (each metric's name,
meaning, direction and baselines), `charts.py` (inline SVG line charts), `embed.py` (images as data URIs).
"""

from vq3d.report.page import build_report

__all__ = ["build_report"]
