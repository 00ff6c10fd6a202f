"""Defensive image decoding: untrusted bytes in, one upright 8-bit RGB PIL image and its facts (size, format,
orientation, capture time) out, or ``BadImage`` with a reason a person can act on. The facts are read here,
once, and every metadata fault is caught here: nothing after decoding parses the file's metadata again.

Order matters: the byte limit is checked before anything is parsed; only the documented formats' parsers are
ever run (``ACCEPTED_FORMATS``: no EPS through Ghostscript, no JPEG 2000, FITS, TGA...); the pixel limit and the
side limit are checked from the header and a progressive JPEG's scans are counted before any pixel is decoded
(so a decompression bomb or a JPEG of thousands of scans costs a few KB of reading, not gigabytes or minutes).
Only Pillow and numpy. Truncated files fail (Pillow's ``LOAD_TRUNCATED_IMAGES`` is never turned on). A
``MemoryError`` (the worker's memory cap) is not the file's fault: it is raised as it is, for the caller to say.
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

# Pillow's parsers for the formats the service documents; the JPEG one also opens MPO (the multi-picture JPEG
# many cameras write), reported as format "MPO".
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")
ACCEPTED_NAMES = "JPEG, PNG, GIF, WebP, TIFF, BMP"
MAX_SIDE = 65_535  # the barcode and OCR engines index pixels with 16-bit sides
MAX_JPEG_SCANS = 100  # progressive JPEGs from cameras and encoders have about 10; each scan re-walks the image
_STRIP_SAMPLES = 1 << 18  # samples converted at a time from 16-bit or float images: a bounded scratch buffer
# Formats recognised by their first bytes only to name them in a refusal (their parsers are never run).
_OTHER_FORMATS = ((b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
                  (b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"%PDF", "PDF"),
                  (b"SIMPLE  =", "FITS"), (b"\x01\xda", "SGI"), (b"8BPS", "Photoshop PSD"),
                  (b"qoif", "QOI"), (b"\x00\x00\x01\x00", "ICO"), (b"DDS ", "DDS"))
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif")


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


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, max_scans: int = MAX_JPEG_SCANS) -> DecodedImage:
    """Decode ``data`` (at most ``max_bytes`` long, at most ``max_pixels`` pixels, sides under 65,536 pixels,
    a JPEG of at most ``max_scans`` scans) to upright RGB."""
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
            im = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except UnidentifiedImageError:
            other = _other_format(data)
            if other:
                raise BadImage(f"{other} is not an accepted image format (accepted: {ACCEPTED_NAMES}); "
                               "convert the image to one of them") from None
            raise BadImage(f"not an image: {_describe(data)} is not in any image format this service reads "
                           f"({ACCEPTED_NAMES})") from None
        except Image.DecompressionBombError as e:
            m = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
            raise BadImage(f"image header declares {size}, over the {max_pixels:,}-pixel limit "
                           "(VLWATCH_MAX_IMAGE_PIXELS); not decoded (possible decompression bomb)") from None
        except MemoryError:  # the worker's memory cap: not the file's fault, the caller says so
            raise
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
        if max(w, h) > MAX_SIDE:
            raise BadImage(f"{fmt} image is {w}x{h} pixels: a side of {max(w, h):,} pixels is over the "
                           f"{MAX_SIDE:,}-pixel limit of the analysis engines; crop or downscale it")
        if fmt in ("JPEG", "MPO"):
            scans = _jpeg_scans(data, max_scans)
            if scans > max_scans:
                raise BadImage(f"JPEG image has more than {max_scans} progressive scans "
                               "(VLWATCH_MAX_JPEG_SCANS; cameras write about 10); not decoded - "
                               "re-encode it as a baseline JPEG")
        try:
            frames = int(getattr(im, "n_frames", 1) or 1)  # walks every frame header of a GIF/WebP/TIFF
        except Exception as e:  # noqa: BLE001 - a damaged later frame: the first may still be whole
            frames = 1
            notes.append(f"frame count unknown: a later frame is unreadable ({type(e).__name__}); "
                         "analysed the first")
        try:
            im.seek(0)
            im.load()
        except MemoryError:
            raise
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
        except MemoryError:
            raise
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
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _deep_to_rgb(im, notes)
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


def _deep_to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale to 8-bit RGB, a strip of rows at a time, so the scratch memory
    is about a megabyte whatever the image's size (never a float64 copy of the whole image). 16-bit samples
    are scaled by 1/257 with exact rounding ((v + 128) // 257 == round(v / 257) for every 16-bit v); 32-bit
    samples above 65535 and floats above 1.0 are clipped; floats in 0..1 are scaled by 255."""
    mode = im.mode
    lo, hi = im.getextrema()
    if mode == "F":
        scale = 255.0 if hi <= 1.0 else 1.0
        notes.append("floating-point samples scaled to 8 bits" if scale != 1.0 else "floating-point samples clipped")
    elif mode.startswith("I;16") or hi <= 65535:
        notes.append(f"{mode} 16-bit samples scaled to 8 bits")
    else:
        notes.append(f"{mode} samples above 65535 clipped to 8 bits")
    w, h = im.size
    rows = max(1, _STRIP_SAMPLES // w)
    gray = np.empty((h, w), dtype=np.uint8)  # [H, W] the 8-bit result
    for top in range(0, h, rows):
        strip = np.asarray(im.crop((0, top, w, min(h, top + rows))))  # [rows, W] samples
        if mode == "F":
            vals = np.nan_to_num(strip.astype(np.float32))
            vals *= np.float32(scale)
            np.rint(vals, out=vals)
        elif mode.startswith("I;16") or hi <= 65535:
            vals = strip.astype(np.int64 if mode == "I" else np.uint32)  # "I" is signed
            vals += 128
            vals //= 257
        else:
            vals = strip.copy()
        gray[top:top + strip.shape[0]] = np.clip(vals, 0, 255, out=vals)
    return Image.fromarray(gray, "L").convert("RGB")


def _jpeg_scans(data: bytes, limit: int) -> int:
    """How many scans (SOS segments) a JPEG holds, counting stops once past ``limit``. Walks the segments by
    their lengths (an EXIF thumbnail's own scans are inside an APP1 segment and not counted) and jumps over
    entropy-coded data to the next marker: one pass over the bytes, in C."""
    n, pos, scans = len(data), 2, 0
    while pos + 4 <= n and scans <= limit:
        if data[pos] != 0xFF:
            break  # not a marker where one must be: the decoder reports the damage
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # end of image
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # restart markers and TEM carry no length
            pos += 2
            continue
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker != 0xDA:
            pos = end
            continue
        scans += 1
        nxt = _NEXT_MARKER.search(data, end)
        if nxt is None:
            break
        pos = nxt.start()
    return scans


# In entropy-coded data 0xFF is followed by 0x00 (a stuffed byte), a restart marker or more 0xFF fill.
_NEXT_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")


def _other_format(data: bytes) -> str | None:
    """The name of a known image format the service does not accept, from the first bytes; None otherwise."""
    for magic, name in _OTHER_FORMATS:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "AVIF" if data[8:12] == b"avif" else "HEIF/HEIC"
    if data[:1] == b"\x0a" and data[1:2] in (b"\x00", b"\x02", b"\x03", b"\x04", b"\x05"):
        return "PCX"
    return None
