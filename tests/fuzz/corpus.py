"""Generated image files for the fuzz suite: good ones (labels with barcodes, in every accepted format and in the
awkward modes and metadata cameras produce) and bad ones, each bad kind with the words its job's reason must
contain (the image's problem, named). Deterministic for a seed; only Pillow, numpy and the test helpers."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from tests import images


def _save(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def label(value: str, rng: np.random.Generator) -> Image.Image:
    """A small shelf label: the value in text and as a QR code, on a slightly tinted background."""
    tint = tuple(int(v) for v in rng.integers(225, 256, 3))
    im = Image.new("RGB", (360, 200), tint)
    d = ImageDraw.Draw(im)
    d.text((10, 10), f"SKU: {value}", fill="black", font=images.font(24))
    im.paste(images.qr_image(value, module_px=3), (int(rng.integers(200, 240)), int(rng.integers(50, 80))))
    return im


# ---- good: (name, make(value, rng) -> bytes) -------------------------------------------------------------------
def _exif_corrupt(value: str, rng: np.random.Generator) -> bytes:
    return _save(label(value, rng), "JPEG", exif=b"Exif\x00\x00MM\x00")  # the poisoning EXIF


def _exif_rotated(value: str, rng: np.random.Generator) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8
    return _save(label(value, rng).rotate(-90, expand=True), "JPEG", exif=exif.tobytes(), quality=95)


def _deep(value: str, rng: np.random.Generator) -> bytes:
    gray = np.asarray(label(value, rng).convert("L")).astype(np.uint16) * 257  # [H, W] 16-bit
    return _save(Image.fromarray(gray), "PNG")


GOOD: dict[str, Callable[[str, np.random.Generator], bytes]] = {
    "png": lambda v, r: _save(label(v, r), "PNG"),
    "jpeg": lambda v, r: _save(label(v, r), "JPEG", quality=int(r.integers(80, 96))),
    "progressive-jpeg": lambda v, r: _save(label(v, r), "JPEG", quality=90, progressive=True),
    "webp": lambda v, r: _save(label(v, r), "WEBP", lossless=True),
    "tiff": lambda v, r: _save(label(v, r), "TIFF", compression="tiff_deflate"),
    "bmp": lambda v, r: _save(label(v, r), "BMP"),
    "gif": lambda v, r: _save(label(v, r).convert("P"), "GIF"),
    "cmyk-jpeg": lambda v, r: _save(label(v, r).convert("CMYK"), "JPEG", quality=95),
    "rgba-png": lambda v, r: _save(label(v, r).convert("RGBA"), "PNG"),
    "16-bit-png": _deep,
    "corrupt-exif-jpeg": _exif_corrupt,
    "exif-rotated-jpeg": _exif_rotated,
}


# ---- bad: (name, make(rng) -> bytes, words the reason must contain) -----------------------------------------
def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _many_scans(rng: np.random.Generator) -> bytes:
    data = _save(images.gradient(96, 64), "JPEG", progressive=True)
    first_sos = data.index(b"\xff\xda")
    scan = data[first_sos:-2]
    return data[:first_sos] + scan * int(rng.integers(150, 2000)) + b"\xff\xd9"


def _flipped_png(rng: np.random.Generator) -> bytes:
    """Bytes flipped in the compressed pixels, the zlib header among them (flips in the deflate stream alone can
    still inflate, to wrong pixels, since the decoder stops before the checksum)."""
    data = bytearray(_save(images.gradient(120, 90), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start] ^= 0xFF
    for pos in rng.integers(start + 1, len(data) - 16, 5):
        data[pos] ^= 0xFF
    return bytes(data)


def _truncated(rng: np.random.Generator) -> bytes:
    data = _save(images.gradient(320, 240), rng.choice(["JPEG", "PNG"]))
    return data[: int(len(data) * rng.uniform(0.3, 0.8))]


def _other_format(rng: np.random.Generator) -> bytes:
    fmt = str(rng.choice(["TGA", "PCX", "SGI", "PPM", "EPS-bytes", "ICO"]))
    if fmt == "EPS-bytes":
        return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    return _save(images.gradient(32, 32), fmt)


BAD: dict[str, tuple[Callable[[np.random.Generator], bytes], tuple[str, ...]]] = {
    "empty": (lambda r: b"", ("empty object",)),
    "text-named-jpg": (lambda r: b"Pallet %d arrived damaged.\n" % r.integers(1000), ("not an image",)),
    "random-bytes": (lambda r: b"\x00\x13" + r.bytes(int(r.integers(10, 4000))), ("not an image",)),
    "truncated": (_truncated, ("truncated",)),
    "flipped-png": (_flipped_png, ("corrupt",)),
    "bomb-header": (lambda r: _png_header_only(int(r.integers(12_000, 40_000)), int(r.integers(12_000, 40_000))),
                    ("pixel limit",)),
    "side-65536": (lambda r: _png_header_only(int(r.integers(65_536, 90_000)), 1), ("65,535-pixel limit",)),
    "jpeg-many-scans": (_many_scans, ("progressive scans",)),
    "not-accepted-format": (_other_format, ("JPEG, PNG, GIF, WebP, TIFF, BMP",)),
    "thin-strip-png": (lambda r: _save(Image.new("RGB", (int(r.integers(12, 40)), 2000), "white"), "PNG"),
                       ("times as tall", "analyzer ocr")),
    "tiny-tiff": (lambda r: _save(Image.new("L", (4, 208), 255), "TIFF"), ("under 8 pixels", "analyzer ocr")),
}
