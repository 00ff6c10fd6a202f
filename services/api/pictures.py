"""The pictures the API serves: an image upright as JPEG, and with its result boxes drawn as PNG, each scaled to
at most ``max_side`` pixels (the page's thumbnails). Decoding goes through ``model.decode`` with the settings'
limits, as in a worker."""

from __future__ import annotations

import io
from typing import Any, Mapping, Optional, Sequence

from PIL import Image

from model.decode import decode_image
from services.render import render_annotated
from services.settings import Settings
from services.storage import ObjectStore


def _upright(store: ObjectStore, key: str, settings: Settings, max_side: Optional[int]) -> tuple[Image.Image, float]:
    """The decoded image, shrunk to ``max_side`` if larger, and the scale applied (1.0: none)."""
    image = decode_image(store.get(key), max_bytes=settings.max_image_bytes,
                         max_pixels=settings.max_image_pixels).image
    scale = 1.0
    if max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
    return image, scale


def upright_jpeg(store: ObjectStore, key: str, settings: Settings, max_side: Optional[int] = None) -> bytes:
    image, _ = _upright(store, key, settings, max_side)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def annotated_png(store: ObjectStore, key: str, settings: Settings, rows: Mapping[str, Sequence[Mapping[str, Any]]],
                  min_score: Optional[float] = None, max_side: Optional[int] = None) -> bytes:
    """The image with every row's box and caption; rows scored below ``min_score`` are left out."""
    image, scale = _upright(store, key, settings, max_side)
    drawn = []
    for kind, found in rows.items():
        kept = [r for r in found if min_score is None or r.get("score") is None or r["score"] >= min_score]
        drawn.append((kind, [dict(r, **{c: float(r[c]) * scale for c in ("x1", "y1", "x2", "y2")}) for r in kept]))
    buf = io.BytesIO()
    render_annotated(image, drawn).save(buf, format="PNG")
    return buf.getvalue()
