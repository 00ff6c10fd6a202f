"""Synthetic camera frames for preprocessing tests and ``bench/preprocess.py``: a smooth colour field, filled boxes,
printed text and sensor-like noise (edges and texture, as a warehouse camera frame has), saved as JPEG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def camera_scene(w: int, h: int, seed: int = 0, shapes: int = 40) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (h // 64 + 2, w // 64 + 2, 3), dtype=np.uint8))
    img = img.resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(shapes):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        draw.rectangle([x, y, x + int(rng.integers(8, w // 5)), y + int(rng.integers(8, h // 5))],
                       fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw.text((int(rng.integers(0, w)), int(rng.integers(0, h))), "LOT 4711 EXP 2026-03", fill=(0, 0, 0),
                  font_size=max(12, w // 70))
    noisy = np.asarray(img).astype(np.int16) + rng.integers(-4, 5, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int = 90, orientation: int | None = None) -> bytes:
    """JPEG bytes, with an EXIF orientation tag when given."""
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(buf, "JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()
