"""Image bytes built at test time: each awkward case ``model.decode`` must handle, and shelf labels like the
committed samples (``scripts/make_samples.py`` draws its labels with ``draw_label`` from here).

Only Pillow, numpy, segno (QR) and python-barcode (Code128): the ``test`` extra."""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# The marker pixel of ``exif_rotated_jpeg``: a red block in the top-left corner of the *stored* pixels.
MARKER = (255, 0, 0)


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font: identical output on every machine."""
    return ImageFont.load_default(size=size)


def _jpeg(image: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **{"quality": 92, **kw})
    return buf.getvalue()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def gradient(width: int = 160, height: int = 120) -> Image.Image:
    """A smooth RGB test picture (no flat areas, so JPEG truncation shows)."""
    y, x = np.mgrid[0:height, 0:width]  # [H, W] each
    rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


# ---- bad or awkward inputs ------------------------------------------------------------------------------------
def empty() -> bytes:
    return b""


def truncated_jpeg() -> bytes:
    """A valid JPEG cut at 60 % of its length (header intact, scan data and EOI missing)."""
    data = _jpeg(gradient(640, 480))
    return data[: int(len(data) * 0.6)]


def text_as_jpg() -> bytes:
    """What a misnamed ``notes.jpg`` holds."""
    return b"Pallet 7 arrived damaged, see photo.\nCall the dock office.\n"


@functools.lru_cache(maxsize=4)
def decompression_bomb(side: int = 20_000) -> bytes:
    """A real PNG bomb: ``side`` x ``side`` black pixels (400 MP by default) in about 400 KB."""
    rows = 500
    chunk = (b"\x00" * (side + 1)) * rows  # filter byte + one grey byte per pixel, ``rows`` rows at a time
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(chunk) for _ in range(side // rows))
    body += comp.compress((b"\x00" * (side + 1)) * (side % rows)) + comp.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def png16(width: int = 64, height: int = 32) -> bytes:
    """A 16-bit greyscale PNG: a horizontal ramp 0..65535 (the value at column x is ``x * 65535 // (w-1)``)."""
    ramp = (np.arange(width, dtype=np.uint32) * 65535 // (width - 1)).astype(np.uint16)
    arr = np.tile(ramp, (height, 1))  # [H, W] uint16
    return _png(Image.fromarray(arr))  # uint16 -> mode I;16


def png16_values(width: int = 64) -> np.ndarray:
    """The 16-bit values of one row of ``png16``."""
    return (np.arange(width, dtype=np.uint32) * 65535 // (width - 1)).astype(np.uint16)


def cmyk_jpeg(rgb: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (64, 48)) -> bytes:
    """A CMYK JPEG of one flat colour (Pillow writes Adobe-marked, inverted CMYK, like Photoshop)."""
    return _jpeg(Image.new("RGB", size, rgb).convert("CMYK"))


def camera_jpeg(image: Image.Image, orientation: int | None = None, quality: int = 92) -> bytes:
    """``image`` as a JPEG, with an EXIF orientation tag when given."""
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    return _jpeg(image, exif=exif.tobytes(), quality=quality)


def camera_scene(width: int, height: int, seed: int = 0, shapes: int = 40) -> Image.Image:
    """A synthetic camera frame for preprocessing checks: a smooth colour field, filled boxes, printed text and
    sensor-like noise (edges and texture, as a warehouse camera frame has)."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (height // 64 + 2, width // 64 + 2, 3), dtype=np.uint8))
    img = img.resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(shapes):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.rectangle([x, y, x + int(rng.integers(8, width // 5)), y + int(rng.integers(8, height // 5))],
                       fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw.text((int(rng.integers(0, width)), int(rng.integers(0, height))), "LOT 4711 EXP 2026-03",
                  fill=(0, 0, 0), font=font(max(12, width // 70)))
    noisy = np.asarray(img).astype(np.int16) + rng.integers(-4, 5, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def exif_rotated_jpeg(width: int = 120, height: int = 80) -> bytes:
    """Stored ``width`` x ``height`` (landscape) with EXIF orientation 6 (rotate 90 degrees clockwise to view).

    A red ``MARKER`` block sits at the stored top-left; upright, the image is ``height`` x ``width`` and the
    block is in the top-right corner."""
    im = Image.new("RGB", (width, height), (230, 230, 230))
    ImageDraw.Draw(im).rectangle([0, 0, 15, 15], fill=MARKER)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(im, exif=exif.tobytes())


def animated_gif(frames: int = 3, size: tuple[int, int] = (40, 30)) -> bytes:
    """``frames`` flat frames: red, green, blue, ... (the first is red)."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    ims = [Image.new("RGB", size, colours[i % len(colours)]) for i in range(frames)]
    buf = io.BytesIO()
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=100, loop=0)
    return buf.getvalue()


def rgba_png(size: tuple[int, int] = (20, 10)) -> bytes:
    """Left half opaque blue, right half fully transparent (which must come out white)."""
    im = Image.new("RGBA", size, (0, 0, 255, 255))
    ImageDraw.Draw(im).rectangle([size[0] // 2, 0, size[0], size[1]], fill=(0, 0, 0, 0))
    return _png(im)


def la_png(size: tuple[int, int] = (20, 10)) -> bytes:
    """Greyscale + alpha: grey 100 opaque on the left, transparent on the right."""
    im = Image.new("LA", size, (100, 255))
    ImageDraw.Draw(im).rectangle([size[0] // 2, 0, size[0], size[1]], fill=(0, 0))
    return _png(im)


def palette_png(size: tuple[int, int] = (20, 10)) -> bytes:
    """A "P" image with a transparent palette entry on the right half."""
    im = Image.new("P", size, 1)
    im.putpalette([0, 0, 0, 0, 128, 0] + [0] * (254 * 3))
    ImageDraw.Draw(im).rectangle([size[0] // 2, 0, size[0], size[1]], fill=0)
    buf = io.BytesIO()
    im.save(buf, format="PNG", transparency=0)
    return buf.getvalue()


def gray_jpeg(size: tuple[int, int] = (32, 32), value: int = 77) -> bytes:
    return _jpeg(Image.new("L", size, value))


def jpeg_of_size(n_bytes: int) -> bytes:
    """A valid JPEG padded (with a COM segment) to at least ``n_bytes``."""
    data = _jpeg(gradient(32, 32))
    pad = max(0, n_bytes - len(data))
    segs = []
    while pad > 0:
        n = min(pad, 65533)
        segs.append(b"\xff\xfe" + struct.pack(">H", n + 2) + b"x" * n)
        pad -= n + 4
    return data[:2] + b"".join(segs) + data[2:]


# ---- shelf labels ----------------------------------------------------------------------------------------------
def code128_image(value: str, module_px: int = 3, height: int = 110) -> Image.Image:
    """A Code128 symbol, ``module_px`` pixels per module, quiet zones included, no human-readable line."""
    return linear_image("code128", value, module_px, height)


def linear_image(symbology: str, value: str, module_px: int = 3, height: int = 110, **options: object
                 ) -> Image.Image:
    """A 1D symbol of python-barcode's ``symbology`` (``code128``, ``ean13``, ``code39``...; ``options`` go to
    its constructor), ``module_px`` pixels per module, 10-module quiet zones, no human-readable line."""
    import barcode

    modules = barcode.get(symbology, value, options=options or None).build()[0]  # "1011..." one char per module
    quiet = 10
    w = (len(modules) + 2 * quiet) * module_px
    im = Image.new("L", (w, height), 255)
    d = ImageDraw.Draw(im)
    for i, bit in enumerate(modules):
        if bit == "1":
            x = (quiet + i) * module_px
            d.rectangle([x, 0, x + module_px - 1, height - 1], fill=0)
    return im.convert("RGB")


def qr_image(value: str, module_px: int = 4) -> Image.Image:
    """A full (not micro) QR symbol, ``module_px`` pixels per module, 4-module quiet zone."""
    import segno

    buf = io.BytesIO()
    segno.make_qr(value, error="m").save(buf, kind="png", scale=module_px, border=4)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def draw_label(sku: str, *, code128: bool = True, qr: bool = True, title: str = "Aisle 4  Bay 12",
               qr_value: str | None = None, bar_px: int = 3, qr_px: int = 4,
               ) -> tuple[Image.Image, dict[str, tuple[int, int, int, int]]]:
    """A white shelf label with ``SKU: <sku>`` in large type, a Code128 of the SKU (``bar_px`` pixels per
    module) and a QR (``qr_px`` per module) of ``qr_value`` (default ``https://wh.example/sku/<sku>``).
    Returns the label and each symbol's pixel box (quiet zones included)."""
    qr_value = qr_value or f"https://wh.example/sku/{sku}"
    c = code128_image(sku, module_px=bar_px) if code128 else None
    q = qr_image(qr_value, module_px=qr_px) if qr else None
    width = max(900, 30 + (c.width if c else 0) + 40 + (q.width if q else 0) + 25)
    height = max(420, 170 + (q.height if q else 0) - 120 + 25 + 120)
    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    d.rectangle([2, 2, width - 3, height - 3], outline=(30, 30, 30), width=3)
    d.text((30, 24), title, fill=(60, 60, 60), font=font(30))
    d.text((30, 70), f"SKU: {sku}", fill="black", font=font(56))
    boxes: dict[str, tuple[int, int, int, int]] = {}
    if c is not None:
        im.paste(c, (30, 170))
        boxes["Code128"] = (30, 170, 30 + c.width, 170 + c.height)
    if q is not None:
        x, y = width - q.width - 25, height - q.height - 25
        im.paste(q, (x, y))
        boxes["QRCode"] = (x, y, x + q.width, y + q.height)
    return im, boxes


def label_png(sku: str, code128: bool = True, qr: bool = True) -> bytes:
    """PNG bytes of ``draw_label``."""
    return _png(draw_label(sku, code128=code128, qr=qr)[0])
