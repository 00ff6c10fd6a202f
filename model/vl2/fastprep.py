"""Fast image preprocessing beside the exact one: JPEG bytes (or a PIL image) -> model-ready tiles
[1 + nw*nh, 3, S, S] float32 with the official tile grid, token count and geometry, within PSNR >= 40 dB of the
exact path's pixels (``VL2Processor.image_tiles``, bit-identical to the official processor).

Where the exact path spends its time on a 12 MP JPEG at one thread: a full-resolution decode, two Pillow bicubic
resizes of the full image (global view and local canvas), a padded copy per view, a crop per tile and a float
normalisation over a trailing axis of 3. This path instead

1. decodes a JPEG at reduced scale (libjpeg-turbo DCT scaling: 1/8, 1/4 or 1/2) when the reduced image is still
   1.5x the local content (``jpeg_scale``); the scale must divide both sides, so the reduced image covers exactly
   the full one and the geometry stays the full image's. JPEG bytes decode straight into a numpy array
   (simplejpeg, same pixels as Pillow's decoder);
2. resizes once, to the local canvas content, and resizes the global view from that content (the shared
   reduction: every candidate is >= S in both directions, so the content always holds the global view's
   resolution). Resizes are torch's antialiased bicubic uint8 kernel, which follows Pillow's within one level;
3. pastes uint8 pixels straight into one [tiles, 3, S, S] canvas filled once with the pad colour, and converts
   and normalises it in two vectorised passes that give the official float32 results of ``(x / 255 - mean) / std``
   (``_normalize``), so equal pixels give equal floats.

Geometry (best resolution, ``ImageOps.contain`` sizes, centring offsets) is computed from the original size with
Pillow's own arithmetic. Where nothing is resized (a 1024x768 image is its own local content in a 1152x768 canvas),
the local tiles are bit-identical to the exact path's.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image

from model.vl2.tiling import select_best_resolution

_ORIENTATION = 0x0112
_TRANSPOSE = (2, 3, 4, 5, 6, 7, 8)  # the EXIF orientations ImageOps.exif_transpose undoes
_SWAPS_AXES = (5, 6, 7, 8)
DRAFT_MARGIN = 1.5  # see _draft


@dataclass(frozen=True)
class TileSpec:
    """What the processor's configuration fixes for every image."""

    candidates: tuple[tuple[int, int], ...]
    image_size: int = 384
    pad_color: tuple[int, int, int] = (127, 127, 127)  # official: int(mean * 255) per channel
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    normalize: bool = True


def contain_size(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The size ``ImageOps.contain(image_of_size, box)`` resizes to (Pillow's arithmetic, ``round`` included)."""
    w, h = size
    bw, bh = box
    im_ratio, dest_ratio = w / h, bw / bh
    if im_ratio > dest_ratio:
        return bw, round(h / w * bw)
    if im_ratio < dest_ratio:
        return round(w / h * bh), bh
    return bw, bh


def pad_offset(content: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """Where ``ImageOps.pad`` pastes content of this size in the box (centred, ``round``)."""
    if content[0] != box[0]:
        return round((box[0] - content[0]) * 0.5), 0
    return 0, round((box[1] - content[1]) * 0.5)


def fast_tiles(source: bytes | Image.Image, spec: TileSpec, cropping: bool = True,
               best: tuple[int, int] | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """(tiles [1 + nw*nh, 3, S, S] float32: global view then local tiles row-major, (nw, nh)).

    ``bytes`` are opened lazily and turned upright by their EXIF orientation (as ``model.decode`` does), so a JPEG can
    be decoded at reduced scale; a PIL image is taken as it stands (reduced at decode only if not loaded yet).
    ``best`` (width, height) is the local canvas (default: ``select_best_resolution``, or S x S without cropping).
    """
    im = Image.open(io.BytesIO(source)) if isinstance(source, bytes) else source
    orientation = _orientation(im) if isinstance(source, bytes) else None
    s = spec.image_size
    upright = (im.height, im.width) if orientation in _SWAPS_AXES else im.size
    if best is None:
        best = select_best_resolution(upright, spec.candidates) if cropping else (s, s)
    local = contain_size(upright, best)
    local_stored = (local[1], local[0]) if orientation in _SWAPS_AXES else local  # in the file's orientation
    pixels = _decode(source, im, local_stored)  # [H, W, 3] uint8, reduced at decode where that is safe
    content = _resize_u8(pixels, local_stored)
    if orientation in _TRANSPOSE:
        content = _orient(content, orientation).contiguous()
    glob = _resize_u8(content, contain_size(upright, (s, s)))  # the shared reduction: from the content

    nw, nh = best[0] // s, best[1] // s
    canvas = np.empty((1 + nw * nh, 3, s, s), dtype=np.uint8)  # [tiles, 3, S, S]
    canvas[:] = np.asarray(spec.pad_color, dtype=np.uint8)[:, None, None]  # [3, 1, 1] per channel
    _paste(canvas[:1], glob.numpy(), pad_offset((glob.shape[1], glob.shape[0]), (s, s)), 1)
    _paste(canvas[1:], content.numpy(), pad_offset(local, best), nw)
    out = np.divide(canvas, np.float32(255), dtype=np.float32)  # ToTensor: float32(x) / 255, one pass
    if spec.normalize:
        _normalize(out, spec)
    return torch.from_numpy(out), (nw, nh)


def _normalize(x: np.ndarray, spec: TileSpec) -> None:
    """``(x - mean) / std`` in place, giving the official float32 results. Where all channels share one mean and one
    power-of-two std (the releases: 0.5 and 0.5) it is one pass: ``x / std`` is then exact, so
    ``x * (1 / std) - mean / std`` rounds once, at the same place as ``(x - mean) / std``."""
    m, s = np.float32(spec.mean[0]), np.float32(spec.std[0])
    if len(set(spec.mean)) == 1 and len(set(spec.std)) == 1 and math.frexp(s)[0] == 0.5:
        t = torch.from_numpy(x)  # [tiles, 3, S, S], shares x's memory
        torch.add(torch.tensor(float(m) / float(s)).neg(), t, alpha=1.0 / float(s), out=t)
        return
    np.subtract(x, np.asarray(spec.mean, dtype=np.float32)[:, None, None], out=x)  # [3, 1, 1] per channel
    np.divide(x, np.asarray(spec.std, dtype=np.float32)[:, None, None], out=x)


def jpeg_scale(im: Image.Image, need: tuple[int, int]) -> int:
    """The JPEG scale reduction (8, 4, 2; 1 = none) to decode ``im`` at: the largest that divides both sides (so the
    reduced image covers exactly the full one) and leaves at least ``DRAFT_MARGIN`` x ``need`` (w, h) pixels.

    The margin keeps the final antialiased bicubic resize doing the filtering: measured on textured scenes, a
    reduced image 1.1-1.2x the content gives 37-42 dB against the exact path (the DCT scaling's own filter shows),
    1.5-1.7x gives 45-48 dB, 3x and more above 50 dB."""
    if getattr(im, "format", None) != "JPEG" or not getattr(im, "tile", None):  # not a JPEG, or decoded already
        return 1
    w, h = im.size
    return next((s for s in (8, 4, 2) if w % s == 0 and h % s == 0 and w // s >= DRAFT_MARGIN * need[0]
                 and h // s >= DRAFT_MARGIN * need[1]), 1)


def _decode(source: bytes | Image.Image, im: Image.Image, need: tuple[int, int]) -> torch.Tensor:
    """The stored pixels [H, W, 3] uint8 at ``jpeg_scale``. JPEG bytes in RGB or grey go through simplejpeg
    (libjpeg-turbo straight into a numpy array: the same pixels as Pillow's decoder, without Pillow's two copies
    out of its own buffer); anything else (CMYK JPEGs, PNG, a PIL image) through Pillow, with ``draft``."""
    s = jpeg_scale(im, need)
    w, h = im.width // s, im.height // s
    if isinstance(source, bytes) and im.format == "JPEG" and im.mode in ("RGB", "L"):
        try:
            arr = simplejpeg.decode_jpeg(source, colorspace="RGB", min_width=w, min_height=h)
        except ValueError:  # what simplejpeg cannot read, Pillow reports in its own words below
            arr = None
        if arr is not None and arr.shape == (h, w, 3):
            return torch.from_numpy(arr)
    if s > 1:
        im.draft(None, (w, h))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return torch.from_numpy(np.array(im))  # the one writable copy out of Pillow


def _orient(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """[H, W, 3] turned upright as ``ImageOps.exif_transpose`` turns an image with this EXIF orientation."""
    t = pixels.transpose(0, 1) if orientation in _SWAPS_AXES else pixels
    flips = {2: (1,), 3: (0, 1), 4: (0,), 5: (), 6: (1,), 7: (0, 1), 8: (0,)}[orientation]
    return t.flip(flips) if flips else t


def _resize_u8(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[h, w, 3] uint8 -> [size[1], size[0], 3] uint8, antialiased bicubic: torch's uint8 kernel, which follows
    Pillow's (within one level) at a fraction of its time."""
    if (pixels.shape[1], pixels.shape[0]) == size:
        return pixels
    x = pixels.permute(2, 0, 1)[None]  # [1, 3, h, w], channels-last in memory (no copy)
    y = F.interpolate(x, size=(size[1], size[0]), mode="bicubic", antialias=True)  # [1, 3, H, W] uint8
    return y[0].permute(1, 2, 0)  # [H, W, 3]


def _paste(tiles: np.ndarray, pixels: np.ndarray, offset: tuple[int, int], per_row: int) -> None:
    """Write ``pixels`` [h, w, 3] at ``offset`` (x, y) of the canvas that ``tiles`` [n, 3, S, S] cut row-major,
    ``per_row`` tiles wide: one strided copy per tile the content overlaps."""
    s = tiles.shape[-1]
    h, w = pixels.shape[:2]
    ox, oy = offset
    for t in range(tiles.shape[0]):
        ty, tx = (t // per_row) * s, (t % per_row) * s
        y0, y1 = max(ty, oy), min(ty + s, oy + h)
        x0, x1 = max(tx, ox), min(tx + s, ox + w)
        if y0 < y1 and x0 < x1:
            src = pixels[y0 - oy:y1 - oy, x0 - ox:x1 - ox]  # [y, x, 3]
            tiles[t, :, y0 - ty:y1 - ty, x0 - tx:x1 - tx] = src.transpose(2, 0, 1)  # [3, y, x]


def _orientation(im: Image.Image) -> int | None:
    try:
        value = im.getexif().get(_ORIENTATION)
    except Exception:  # noqa: BLE001 - unreadable EXIF is the same as none (model.decode notes it)
        return None
    return value if value in _TRANSPOSE else None


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB of two normalised tile tensors (range [-1, 1]: peak 2)."""
    mse = float((a.double() - b.double()).pow(2).mean())
    return float("inf") if mse == 0 else 10.0 * float(np.log10(peak * peak / mse))


def tile_spec(candidates: Sequence[Sequence[int]], image_size: int, pad_color: Sequence[int],
              mean: Sequence[float], std: Sequence[float], normalize: bool) -> TileSpec:
    return TileSpec(tuple((int(w), int(h)) for w, h in candidates), int(image_size),
                    tuple(int(c) for c in pad_color),  # type: ignore[arg-type]
                    tuple(float(x) for x in mean), tuple(float(x) for x in std), normalize)  # type: ignore[arg-type]
