"""model.decode's limits: the documented formats only, sides under 65,536 pixels, a bounded number of JPEG scans,
16-bit conversion without float copies, and metadata faults that never escape decoding."""

from __future__ import annotations

import io
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image, features

from model.decode import BadImage, decode_image
from tests import images

LIMITS = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 80_000_000}


def _save(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _reason(data: bytes, **kw: int) -> str:
    with pytest.raises(BadImage) as e:
        decode_image(data, **{**LIMITS, **kw})
    return e.value.reason


OTHER_FORMATS = {
    "TGA": lambda: _save(images.gradient(16, 16), "TGA"),
    "PCX": lambda: _save(images.gradient(16, 16), "PCX"),
    "SGI": lambda: _save(images.gradient(16, 16), "SGI"),
    "PPM": lambda: _save(images.gradient(16, 16), "PPM"),
    "EPS": lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n",
}
if features.check("jpg_2000"):
    OTHER_FORMATS["JPEG2000"] = lambda: _save(images.gradient(16, 16), "JPEG2000")


@pytest.mark.parametrize("fmt", sorted(OTHER_FORMATS))
def test_formats_outside_the_documented_ones_are_refused_unparsed(fmt: str) -> None:
    reason = _reason(OTHER_FORMATS[fmt]())
    assert "JPEG, PNG, GIF, WebP, TIFF, BMP" in reason
    if fmt in ("EPS", "JPEG2000", "PCX", "SGI"):  # recognised by their first bytes, and named
        assert reason.startswith(("PostScript/EPS", "JPEG 2000", "PCX", "SGI")) and "not an accepted" in reason


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_the_documented_formats_decode(fmt: str) -> None:
    d = decode_image(_save(images.gradient(24, 16), fmt), **LIMITS)
    assert (d.format, d.width, d.height) == (fmt, 24, 16)


def test_a_side_of_65536_pixels_is_refused_from_the_header() -> None:
    data = _save(Image.new("1", (70_000, 2)), "PNG")  # 140,000 pixels: under every pixel limit
    reason = _reason(data)
    assert "70000x2" in reason and "65,535-pixel limit" in reason
    assert decode_image(_save(Image.new("1", (65_535, 2)), "PNG"), **LIMITS).width == 65_535


def _scan_units(data: bytes) -> tuple[bytes, list[bytes]]:
    """A progressive JPEG split into its header (through the frame header) and its scans, each with the tables
    written before it (DHT ... SOS + entropy-coded data)."""
    pos, units, start = 2, [], None
    while data[pos + 1] != 0xD9:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            start = header_end = pos + 2 + length
        if marker != 0xDA:
            pos += 2 + length
            continue
        pos += 2 + length
        while not (data[pos] == 0xFF and data[pos + 1] not in (0x00, 0xFF) and not 0xD0 <= data[pos + 1] <= 0xD7):
            pos += 1
        units.append(data[start:pos])
        start = pos
    return data[:header_end], units


def test_a_jpeg_of_thousands_of_scans_is_refused_before_decoding() -> None:
    progressive = _save(images.gradient(640, 480), "JPEG", progressive=True, quality=90)
    header, scans = _scan_units(progressive)
    assert 5 <= len(scans) <= 20  # what an encoder writes
    assert decode_image(progressive, **LIMITS).width == 640
    crafted = header + scans[0] + scans[-1] * 2000 + b"\xff\xd9"
    t = time.perf_counter()
    reason = _reason(crafted)
    assert time.perf_counter() - t < 0.5
    assert "more than 100 progressive scans" in reason and "VLWATCH_MAX_JPEG_SCANS" in reason
    assert "more than 5 progressive" in _reason(progressive, max_scans=5)


def test_scans_inside_an_exif_thumbnail_are_not_counted() -> None:
    thumb = _save(images.gradient(32, 32), "JPEG", progressive=True)  # its own scans, inside APP1
    exif = Image.Exif()
    exif[0x010E] = thumb.decode("latin-1")  # ImageDescription: any bytes
    data = _save(images.gradient(64, 48), "JPEG", exif=exif.tobytes())
    assert decode_image(data, **LIMITS, max_scans=1).width == 64


def test_16_bit_conversion_needs_no_float_copy_of_the_image() -> None:
    side = 3000
    arr = (np.arange(side * side, dtype=np.uint32) % 65536).astype(np.uint16).reshape(side, side)
    data = _save(Image.fromarray(arr), "PNG")  # mode I;16
    tracemalloc.start()
    try:
        d = decode_image(data, **LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * side * side  # the 8-bit result (1 byte a pixel) and a strip, never 8 bytes a pixel
    want = ((arr[:2].astype(np.uint32) + 128) // 257).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(d.image)[:2, :, 0], want)
    np.testing.assert_array_equal(want, np.rint(arr[:2] / 257.0).astype(np.uint8))  # exactly round(v / 257)


@pytest.mark.parametrize(("mode", "values", "expected", "note"), [
    ("I", [0, 257, 65535, 128], [0, 1, 255, 0], "16-bit samples scaled"),
    ("I", [0, 100, 70_000, -5], [0, 100, 255, 0], "clipped"),
    ("F", [0.0, 0.5, 1.0, np.nan], [0, 128, 255, 0], "scaled to 8 bits"),
    ("F", [0.0, 12.4, 300.0, -3.0], [0, 12, 255, 0], "clipped"),
])
def test_32_bit_and_float_samples(mode: str, values: list, expected: list, note: str) -> None:
    arr = np.array([values] * 3, dtype=np.int32 if mode == "I" else np.float32)  # [3, 4]
    d = decode_image(_save(Image.fromarray(arr, mode), "TIFF"), **LIMITS)
    assert np.asarray(d.image)[1, :, 0].tolist() == expected
    assert any(note in n for n in d.notes)


@pytest.mark.parametrize("exif", [b"Exif\x00\x00MM\x00", b"Exif\x00\x00II*\x00\xff\xff\xff\xff", b"Exif\x00\x00"])
def test_corrupt_exif_decodes_without_capture_time_or_orientation(exif: bytes) -> None:
    d = decode_image(_save(images.gradient(64, 48), "JPEG", exif=exif), **LIMITS)
    assert (d.width, d.height, d.capture_time, d.orientation_applied) == (64, 48, None, None)
