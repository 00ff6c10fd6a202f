"""Degradations for robustness curves: each at three strengths, seeded, so a run is reproducible to the byte.

| name  | strength 1 | 2 | 3 | what |
| ----- | ---------- | - | - | ---- |
| blur  | sigma 1 px | 2 | 3 | Gaussian lens blur |
| dark  | gain 0.5   | 0.3 | 0.15 | exposure cut, then sensor noise (sigma 2) as a dark sensor adds it |
| noise | sigma 8    | 16 | 32 | Gaussian sensor noise, per pixel, grey |
| jpeg  | quality 50 | 25 | 10 | JPEG re-compression |
| tilt  | 5 degrees  | 15 | 30 | camera roll: the image turned about its centre, canvas grown, truth boxes turned too |

The random state of an image's degradation is drawn from (seed, file name, degradation, strength): the same
image gets the same noise in every run, whatever else the run holds.
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import replace
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageFilter

from services.evaluation.truth import ImageTruth

LEVELS: dict[str, tuple[float, float, float]] = {
    "blur": (1.0, 2.0, 3.0),
    "dark": (0.5, 0.3, 0.15),
    "noise": (8.0, 16.0, 32.0),
    "jpeg": (50.0, 25.0, 10.0),
    "tilt": (5.0, 15.0, 30.0),
}
UNITS = {"blur": "sigma px", "dark": "gain", "noise": "sigma", "jpeg": "quality", "tilt": "degrees"}
NAMES = tuple(LEVELS)
TILT_FILL = (128, 128, 128)


class DegradeError(ValueError):
    pass


def parse_degradations(text: str | None) -> list[str]:
    """``"blur,dark"`` -> ``["blur", "dark"]``; ``"all"`` -> every degradation."""
    if not text:
        return []
    names = list(NAMES) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in LEVELS]
    if unknown:
        raise DegradeError(f"unknown degradation(s) {', '.join(unknown)}; known: {', '.join(NAMES)}, all")
    return list(dict.fromkeys(names))


def rng_for(seed: int, file_name: str, name: str, strength: int) -> np.random.Generator:
    key = zlib.crc32(f"{file_name}|{name}|{strength}".encode())
    return np.random.default_rng([seed, key])


def degrade(image: Image.Image, truth: ImageTruth, name: str, strength: int, seed: int
            ) -> tuple[Image.Image, ImageTruth]:
    """``image`` (upright RGB) degraded by ``name`` at ``strength`` (1..3), and its truth moved with it (only
    ``tilt`` moves boxes)."""
    value = LEVELS[name][strength - 1]
    rng = rng_for(seed, truth.file_name, name, strength)
    if name == "tilt":
        return _tilt(image, truth, value)
    return _PIXEL_OPS[name](image, value, rng), truth


def _blur(image: Image.Image, sigma: float, _: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(sigma))


def _noisy(a: np.ndarray, sigma: float, rng: np.random.Generator) -> Image.Image:
    a = a + rng.normal(0.0, sigma, (a.shape[0], a.shape[1], 1))  # [H, W, 1] grey noise over the 3 channels
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")


def _dark(image: Image.Image, gain: float, rng: np.random.Generator) -> Image.Image:
    return _noisy(np.asarray(image, dtype=np.float32) * gain, 2.0, rng)


def _noise(image: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    return _noisy(np.asarray(image, dtype=np.float32), sigma, rng)


def _jpeg(image: Image.Image, quality: float, _: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")


_PIXEL_OPS: dict[str, Callable[[Image.Image, float, np.random.Generator], Image.Image]] = {
    "blur": _blur, "dark": _dark, "noise": _noise, "jpeg": _jpeg,
}


def _tilt(image: Image.Image, truth: ImageTruth, degrees: float) -> tuple[Image.Image, ImageTruth]:
    """Turn counter-clockwise by ``degrees`` about the centre on a grown canvas; every truth box becomes the
    axis-aligned box around its turned corners."""
    w, h = image.size
    out = image.rotate(degrees, resample=Image.BICUBIC, expand=True, fillcolor=TILT_FILL)
    t = math.radians(degrees)
    cos, sin = math.cos(t), math.sin(t)
    cx, cy, ncx, ncy = w / 2, h / 2, out.width / 2, out.height / 2

    def turn(box: Any) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = box
        xs, ys = [], []
        for x, y in ((x1, y1), (x2, y1), (x2, y2), (x1, y2)):
            dx, dy = x - cx, y - cy  # image y points down: a counter-clockwise turn on screen
            xs.append(ncx + dx * cos + dy * sin)
            ys.append(ncy - dx * sin + dy * cos)
        return (round(max(0.0, min(xs)), 2), round(max(0.0, min(ys)), 2),
                round(min(float(out.width), max(xs)), 2), round(min(float(out.height), max(ys)), 2))

    def moved(items: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if items is None:
            return None
        return [item | {"box": turn(item["box"])} if item.get("box") is not None else item for item in items]

    return out, replace(truth, barcodes=moved(truth.barcodes), text_lines=moved(truth.text_lines),
                        objects=moved(truth.objects))
