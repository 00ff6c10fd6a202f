"""Annotated PNGs: an image from the bucket with its stored boxes and labels drawn on the upright pixels."""

from __future__ import annotations

from pathlib import Path

from services.db import session_scope
from services.queries import find_image, image_results
from services.render import render_annotated
from services.settings import Settings
from model.decode import decode_image


def annotate_image(db_url: str, store, ref: str, output: Path, settings: Settings) -> Path:  # noqa: ANN001
    with session_scope(db_url) as s:
        res = image_results(s, find_image(s, ref))
    decoded = decode_image(store.get(res.image.key), max_bytes=settings.max_image_bytes,
                           max_pixels=settings.max_image_pixels)
    output.parent.mkdir(parents=True, exist_ok=True)
    render_annotated(decoded.image, list(res.rows.items())).save(output, format="PNG")
    return output
