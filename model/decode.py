"""Defensive image decoding: untrusted bytes in, one upright 8-bit RGB PIL image out, or ``BadImage`` with a
reason a person can act on.

Order matters: the byte limit is checked before anything is parsed and the pixel limit is checked from the
header before any pixel is decoded (so a decompression bomb costs a few KB of reading, not gigabytes).
Only Pillow and numpy. Truncated files fail (Pillow's ``LOAD_TRUNCATED_IMAGES`` is never turned on).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_ORIENTATION = 0x0112
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class BadImage(ValueError):
    """The bytes are not an image this service will analyse; ``reason`` says why and what to do."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CaptureTime:
    """When the camera says it took the picture: its wall clock (EXIF DateTimeOriginal, else DateTime) and, when
    the camera wrote one, the UTC offset of that clock (EXIF OffsetTimeOriginal, else OffsetTime)."""

    wall_clock: datetime  # naive: EXIF times carry no zone of their own
    offset: timedelta | None

    def in_utc(self, zone: tzinfo = timezone.utc) -> datetime:
        """The capture time in UTC: the camera's own offset where EXIF gives one, else the wall clock read in
        ``zone`` (the source's configured time zone; on a clock change the earlier of two readings is taken)."""
        if self.offset is not None:
            return self.wall_clock.replace(tzinfo=timezone(self.offset)).astimezone(timezone.utc)
        return self.wall_clock.replace(tzinfo=zone).astimezone(timezone.utc)


@dataclass
class DecodedImage:
    image: Image.Image  # upright, mode "RGB", 8 bits per channel
    width: int  # of the upright image
    height: int
    format: str  # Pillow's format name: "JPEG", "PNG", "GIF", ...
    orientation_applied: int | None  # the EXIF orientation (2..8) that was undone, None when none was needed
    frames: int  # frames in the file; only the first is analysed
    notes: list[str] = field(default_factory=list)  # what was converted, for the job's record
    capture_time: CaptureTime | None = None  # from EXIF; None if absent or unreadable


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> DecodedImage:
    """Decode ``data`` (at most ``max_bytes`` long, at most ``max_pixels`` pixels) to upright RGB."""
    n = len(data)
    if n == 0:
        raise BadImage("empty object: it has 0 bytes (an interrupted upload?); upload the image again")
    if n > max_bytes:
        raise BadImage(f"object is {n} bytes, over the {max_bytes}-byte limit (VLWATCH_MAX_IMAGE_BYTES); "
                       "shrink the image or raise the limit")
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies, below
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise BadImage(f"not an image: {_describe(data)} is not in any image format this service reads "
                           "(JPEG, PNG, GIF, WebP, TIFF, BMP...)") from None
        except Image.DecompressionBombError as e:
            m = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
            raise BadImage(f"image header declares {size}, over the {max_pixels:,}-pixel limit "
                           "(VLWATCH_MAX_IMAGE_PIXELS); not decoded (possible decompression bomb)") from None
        except Exception as e:  # noqa: BLE001 - any parser failure on untrusted bytes is a bad image
            raise BadImage(f"unreadable image header: {type(e).__name__}: {e}") from None
        fmt = im.format or "unknown"
        w, h = im.size
        if w <= 0 or h <= 0:
            raise BadImage(f"{fmt} image declares a size of {w}x{h} pixels; nothing to analyse")
        if w * h > max_pixels:
            raise BadImage(f"{fmt} image is {w}x{h} = {w * h:,} pixels, over the {max_pixels:,}-pixel limit "
                           "(VLWATCH_MAX_IMAGE_PIXELS); not decoded (possible decompression bomb) - "
                           "downscale it or raise the limit")
        try:
            frames = int(getattr(im, "n_frames", 1) or 1)  # walks every frame header of a GIF/WebP/TIFF
        except Exception as e:  # noqa: BLE001 - a damaged later frame: the first may still be whole
            frames = 1
            notes.append(f"frame count unknown: a later frame is unreadable ({type(e).__name__}); "
                         "analysed the first")
        try:
            im.seek(0)
            im.load()
        except Exception as e:  # noqa: BLE001
            raise BadImage(f"{fmt} image is truncated or corrupt ({type(e).__name__}: {e}); "
                           "the file is incomplete - upload it again") from None
        if frames > 1:
            notes.append(f"{frames} frames; analysed the first")
        orientation = _orientation(im)
        try:
            upright = ImageOps.exif_transpose(im) if orientation else im
        except Exception as e:  # noqa: BLE001 - broken EXIF: keep the stored orientation, say so
            upright, orientation = im, None
            notes.append(f"EXIF orientation could not be applied ({type(e).__name__}: {e})")
        if orientation:
            notes.append(f"EXIF orientation {orientation} applied")
        try:
            rgb = _to_rgb(upright, notes)
        except Exception as e:  # noqa: BLE001
            raise BadImage(f"{fmt} image in mode {upright.mode} cannot be converted to RGB "
                           f"({type(e).__name__}: {e})") from None
        exif = upright.info.get("exif")
        if exif and "exif" not in rgb.info:  # keep EXIF (capture time...) readable on the returned image
            rgb.info["exif"] = exif
    for wmsg in caught:
        notes.append(f"decoder warning: {wmsg.message}")
    return DecodedImage(image=rgb, width=rgb.width, height=rgb.height, format=fmt,
                        orientation_applied=orientation, frames=frames, notes=notes,
                        capture_time=_capture_time(upright, notes))


def _describe(data: bytes) -> str:
    head = data[:32]
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"the object (text starting {head.decode('ascii')[:24]!r})"
    return f"the object (first bytes {head[:8].hex()})"


_OFFSET = re.compile(r"^([+-])(\d{2}):(\d{2})$")


def _capture_time(im: Image.Image, notes: list[str]) -> CaptureTime | None:
    """EXIF DateTimeOriginal with OffsetTimeOriginal, else DateTime with OffsetTime (EXIF 2.31 offsets such as
    ``+01:00``; older cameras write none). Read here, once, so that nothing after decoding touches the image's
    metadata; unreadable EXIF is noted, never raised."""
    try:
        exif = im.getexif()
        sub = exif.get_ifd(0x8769)
        raw, raw_offset = sub.get(0x9003), sub.get(0x9011)
        if not raw:
            raw, raw_offset = exif.get(0x0132), sub.get(0x9010)
        if not raw:
            return None
        wall_clock = datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except Exception as e:  # noqa: BLE001 - any EXIF damage is the same as no capture time
        notes.append(f"EXIF capture time unreadable ({type(e).__name__}); upload time used")
        return None
    text = str(raw_offset or "").strip("\x00 ")
    m = _OFFSET.match(text)
    if m and int(m.group(2)) <= 23 and int(m.group(3)) <= 59:
        sign = -1 if m.group(1) == "-" else 1
        return CaptureTime(wall_clock, sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3))))
    if text.strip(":"):  # blank offsets ("   :  ") mean "unknown" in EXIF
        notes.append(f"EXIF time offset {text!r} unreadable; the source's time zone used")
    return CaptureTime(wall_clock, None)


def _orientation(im: Image.Image) -> int | None:
    try:
        value = im.getexif().get(_ORIENTATION)
    except Exception:  # noqa: BLE001 - unreadable EXIF is the same as none
        return None
    return int(value) if isinstance(value, int) and 2 <= value <= 8 else None


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    """8-bit RGB: high bit depths scaled (not clipped), alpha composited on white, CMYK/palette converted."""
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)  # [H, W] 16-bit (or 32-bit int) samples
        if mode.startswith("I;16") or arr.max(initial=0) <= 65535:
            arr = arr / 257.0  # 65535 -> 255 exactly
            notes.append(f"{mode} 16-bit samples scaled to 8 bits")
        else:
            notes.append(f"{mode} samples above 65535 clipped to 8 bits")
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        notes.append("floating-point samples scaled to 8 bits" if scale != 1.0 else "floating-point samples clipped")
        gray = np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if (mode == "P" and "transparency" in im.info) or mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        notes.append("alpha composited on white")
        return Image.alpha_composite(white, im).convert("RGB")
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif mode not in ("L", "1", "P"):
        notes.append(f"mode {mode} converted to RGB")
    return im.convert("RGB")
