"""model.decode.decode_image: one test per awkward input, asserting the exact outcome."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests import images
from model.decode import BadImage, DecodedImage, decode_image

LIMITS = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 80_000_000}


def _ok(data: bytes, **kw: int) -> DecodedImage:
    d = decode_image(data, **{**LIMITS, **kw})
    assert d.image.mode == "RGB" and d.image.size == (d.width, d.height)
    return d


def _bad(data: bytes, **kw: int) -> str:
    with pytest.raises(BadImage) as e:
        decode_image(data, **{**LIMITS, **kw})
    assert isinstance(e.value, ValueError) and e.value.reason == str(e.value)
    return e.value.reason


def test_empty_object() -> None:
    assert _bad(images.empty()).startswith("empty object")


def test_truncated_jpeg_fails_instead_of_decoding_half() -> None:
    data = images.truncated_jpeg()
    assert Image.open(io.BytesIO(data)).size == (640, 480)  # the header alone is intact
    reason = _bad(data)
    assert "truncated" in reason and "JPEG" in reason


def test_text_named_jpg_is_not_an_image() -> None:
    reason = _bad(images.text_as_jpg())
    assert reason.startswith("not an image: ") and "Pallet 7" in reason


def test_decompression_bomb_is_refused_from_the_header() -> None:
    data = images.decompression_bomb()  # 20000 x 20000, past Pillow's own bomb limit too
    t = time.perf_counter()
    reason = _bad(data, max_pixels=80_000_000)
    assert time.perf_counter() - t < 0.5  # refused without inflating 400 MB
    assert "80,000,000-pixel limit" in reason and "400,000,000" in reason


def test_image_over_our_pixel_limit_but_under_pillows_is_refused_before_decoding() -> None:
    data = images.decompression_bomb(5000)  # 25 MP
    reason = _bad(data, max_pixels=10_000_000)
    assert "5000x5000" in reason and "10,000,000-pixel limit" in reason
    assert _ok(data, max_pixels=25_000_000).width == 5000  # at the limit it decodes


def test_png16_is_scaled_by_1_over_257() -> None:
    d = _ok(images.png16())
    row = np.asarray(d.image)[0, :, 0]  # [W] uint8
    want = np.rint(images.png16_values() / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(row, want)
    assert row[0] == 0 and row[-1] == 255 and len(np.unique(row)) > 60  # full range, no clipping
    assert np.all(np.asarray(d.image)[..., 0] == np.asarray(d.image)[..., 2])


def test_cmyk_jpeg_comes_out_in_the_right_colour() -> None:
    data = images.cmyk_jpeg((200, 40, 40))
    src = Image.open(io.BytesIO(data))
    assert src.mode == "CMYK" and "adobe" in src.info  # Adobe-marked (inverted) CMYK
    d = _ok(data)
    mean = np.asarray(d.image).reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(mean, (200, 40, 40), atol=6)
    assert any("CMYK" in n for n in d.notes)


def test_exif_rotated_photo_is_upright() -> None:
    d = _ok(images.exif_rotated_jpeg(120, 80))
    assert (d.width, d.height) == (80, 120) and d.orientation_applied == 6
    a = np.asarray(d.image).astype(int)
    # orientation 6: the stored top-left corner is the upright top-right corner
    assert np.abs(a[3, -4] - images.MARKER).max() < 30
    assert np.abs(a[3, 3] - (230, 230, 230)).max() < 30
    assert np.abs(a[-4, -4] - (230, 230, 230)).max() < 30


def test_photo_without_orientation_reports_none() -> None:
    d = _ok(images.gray_jpeg())
    assert d.orientation_applied is None


def test_animated_gif_first_frame_and_frame_count() -> None:
    d = _ok(images.animated_gif(frames=3))
    assert d.frames == 3 and d.format == "GIF"
    assert tuple(np.asarray(d.image)[5, 5]) == (255, 0, 0)  # the first (red) frame
    assert any("3 frames" in n for n in d.notes)


def test_gif_with_a_truncated_last_frame_still_gives_the_first() -> None:
    data = images.animated_gif(frames=3)
    d = _ok(data[:-20])  # the trailer and the end of the last frame are gone
    assert tuple(np.asarray(d.image)[5, 5]) == (255, 0, 0)


@pytest.mark.parametrize(("make", "opaque"), [
    (images.rgba_png, (0, 0, 255)),
    (images.la_png, (100, 100, 100)),
    (images.palette_png, (0, 128, 0)),
])
def test_alpha_is_composited_on_white(make, opaque: tuple[int, int, int]) -> None:  # noqa: ANN001
    d = _ok(make())
    a = np.asarray(d.image)
    assert tuple(a[5, 2]) == opaque and tuple(a[5, -2]) == (255, 255, 255)
    assert "alpha composited on white" in d.notes


def test_grayscale_becomes_three_equal_channels() -> None:
    d = _ok(images.gray_jpeg(value=77))
    a = np.asarray(d.image).astype(int)
    assert np.all(a[..., 0] == a[..., 1]) and np.all(a[..., 1] == a[..., 2])
    assert abs(a.mean() - 77) < 2


def test_object_larger_than_max_bytes() -> None:
    data = images.jpeg_of_size(200_000)
    assert len(data) >= 200_000
    reason = _bad(data, max_bytes=100_000)
    assert f"{len(data)} bytes" in reason and "100000-byte limit" in reason
    assert _ok(data, max_bytes=len(data)).width == 32  # exactly at the limit is fine


def test_label_png_decodes_unchanged() -> None:
    data = images.label_png("WH-10427")
    d = _ok(data)
    assert (d.format, d.frames, d.orientation_applied, d.notes) == ("PNG", 1, None, [])
    np.testing.assert_array_equal(np.asarray(d.image), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_exif_capture_time_survives_rotation_and_alpha() -> None:
    for mode in ("RGB", "RGBA"):
        exif = Image.Exif()
        exif[0x0112] = 6
        exif.get_ifd(0x8769)[0x9003] = "2026:11:24 08:15:00"
        buf = io.BytesIO()
        Image.new(mode, (30, 20), (10, 20, 30, 255)[: len(mode)]).save(
            buf, format="PNG" if mode == "RGBA" else "JPEG", exif=exif.tobytes())
        d = _ok(buf.getvalue())
        assert d.orientation_applied == 6 and (d.width, d.height) == (20, 30)
        assert d.image.getexif().get_ifd(0x8769).get(0x9003) == "2026:11:24 08:15:00"


_SEEDS = [images.label_png("WH-1", qr=False), images.gray_jpeg(), images.animated_gif(), images.png16(),
          images.cmyk_jpeg(), images.exif_rotated_jpeg()]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(range(len(_SEEDS))), cut=st.floats(0, 1),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=8))
def test_corrupted_bytes_give_an_image_or_bad_image_never_another_error(
        seed: int, cut: float, flips: list[tuple[float, int]]) -> None:
    data = bytearray(_SEEDS[seed])
    for pos, value in flips:
        data[int(pos * (len(data) - 1))] = value
    data = bytes(data[: max(1, int(len(data) * cut))] if cut < 1 else data)
    try:
        d = decode_image(data, max_bytes=1 << 20, max_pixels=4_000_000)
    except BadImage as e:
        assert e.reason
    else:
        assert d.image.mode == "RGB" and d.width * d.height <= 4_000_000
