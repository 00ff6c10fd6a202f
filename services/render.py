"""Draw stored results on an upright image: one colour per kind, a box outline per row and a caption
(objects: label and score; text lines: the text; barcodes: format and value). Pillow only; never imports torch."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

from model.decode import decode_image
from services.db import session_scope
from services.queries import find_image, image_results
from services.settings import Settings
from services.storage import ObjectStore

COLOURS = {  # outline colour per kind; captions are white on the same colour
    "objects": (230, 57, 70),
    "text_lines": (29, 120, 230),
    "barcodes": (20, 160, 90),
}
_MAX_CAPTION = 48


def caption(kind: str, row: Mapping[str, Any]) -> str:
    """The short text drawn above a box."""
    if kind == "barcodes":
        text = f"{row.get('format') or row.get('label') or 'barcode'}: {row.get('value', '')}"
    elif kind == "text_lines":
        text = str(row.get("text") or row.get("label") or "")
    else:
        text = str(row.get("label") or row.get("phrase") or "object")
        if row.get("score") is not None:
            text += f" {float(row['score']):.2f}"
    return text if len(text) <= _MAX_CAPTION else text[: _MAX_CAPTION - 1] + "\u2026"


def render_annotated(image: Image.Image, results: Iterable[tuple[str, Sequence[Mapping[str, Any]]]]
                     ) -> Image.Image:
    """A new RGB image: ``image`` with every row's box (``x1, y1, x2, y2`` pixels, upright) and caption.

    ``results`` is ``[(kind, rows), ...]`` with kind in ``objects``, ``text``, ``barcodes``.
    """
    out = image.convert("RGB")  # always a copy
    w, h = out.size
    lw = max(2, round(min(w, h) / 300))  # line width grows with the image
    font = ImageFont.load_default(size=max(12, round(min(w, h) / 50)))
    draw = ImageDraw.Draw(out)
    for kind, rows in results:
        colour = COLOURS.get(kind)
        if colour is None:
            raise ValueError(f"unknown result kind {kind!r}; expected one of {', '.join(COLOURS)}")
        for row in rows:
            x1, y1, x2, y2 = (float(row[k]) for k in ("x1", "y1", "x2", "y2"))
            x1, x2 = sorted((min(max(x1, 0.0), w - 1.0), min(max(x2, 0.0), w - 1.0)))
            y1, y2 = sorted((min(max(y1, 0.0), h - 1.0), min(max(y2, 0.0), h - 1.0)))
            draw.rectangle([x1, y1, x2, y2], outline=colour, width=lw)
            text = caption(kind, row)
            if not text:
                continue
            l, t, r, b = draw.textbbox((0, 0), text, font=font)
            tw, th = r - l + 2 * lw, b - t + 2 * lw
            ty = y1 - th if y1 - th >= 0 else min(y2, h - th)  # above the box, else below it / inside
            tx = min(x1, max(0.0, w - tw))
            draw.rectangle([tx, ty, tx + tw, ty + th], fill=colour)
            draw.text((tx + lw - l, ty + lw - t), text, fill=(255, 255, 255), font=font)
    return out


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Write ``image`` as PNG to ``path`` atomically (temporary file in the same folder, then rename)."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def annotate_image(db_url: str, store: ObjectStore, ref: str, output: Path, settings: Settings) -> Path:
    """IMAGE (id or key) from the bucket with its stored boxes and labels drawn, written as a PNG to ``output``."""
    with session_scope(db_url) as s:
        res = image_results(s, find_image(s, ref))
    decoded = decode_image(store.get(res.image.key), max_bytes=settings.max_image_bytes,
                           max_pixels=settings.max_image_pixels)
    return save_png(render_annotated(decoded.image, list(res.rows.items())), output)
