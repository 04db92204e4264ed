"""Files embedded in the page as data URIs, so the one HTML file can be moved or mailed alone."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from PIL import Image

MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
        ".svg": "image/svg+xml"}


def data_uri(path: str | Path) -> str:
    """`data:<mime>;base64,...` of a file (the type from its suffix)."""
    path = Path(path)
    mime = MIME.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def img(path: str | Path, alt: str, height: int | None = None, title: str | None = None,
        pixelated: bool = True) -> str:
    """An <img> with the file embedded, shown `height` px tall (small renders scaled up crisply
    when `pixelated`); a visible "missing" note when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return f'<span class="missing">missing: {html.escape(path.name)}</span>'
    style = ""
    if height is not None:
        with Image.open(path) as im:
            w, h = im.size
        style = f' width="{round(w * height / max(h, 1))}" height="{height}"'
    tip = f' title="{html.escape(title)}"' if title else ""
    cls = ' class="px"' if pixelated else ""
    return f'<img{cls} src="{data_uri(path)}" alt="{html.escape(alt)}"{style}{tip}>'


def figure(path: str | Path, caption: str, height: int | None = None, pixelated: bool = True) -> str:
    """An embedded image with a caption under it."""
    return (f'<figure>{img(path, caption, height, pixelated=pixelated)}'
            f'<figcaption>{html.escape(caption)}</figcaption></figure>')
