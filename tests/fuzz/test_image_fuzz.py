"""Decoding on generated and mutated files: an upright RGB image within the limits or ``BadImage`` with a reason,
never another exception, never more than a bounded time; every bad kind of the corpus refused with words that
name its problem (at decoding or by the analyzers' shape limits)."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from model.decode import BadImage, decode_image
from model.engines.barcode import BarcodeAnalyzer
from model.engines.ocr import OcrAnalyzer
from tests.fuzz.corpus import BAD, GOOD
from tests.images import gradient

pytestmark = pytest.mark.fuzz

LIMITS = {"max_bytes": 8 * 1024 * 1024, "max_pixels": 20_000_000}
SECONDS = 3.0  # the longest one decode may take here, whatever the bytes (a busy 2-core machine)


def _decode(data: bytes) -> str | None:
    """None for an image decoded within the limits, else the refusal's reason."""
    t = time.perf_counter()
    try:
        d = decode_image(data, **LIMITS)
    except BadImage as exc:
        assert exc.reason and exc.reason == str(exc)
        reason = exc.reason
    else:
        assert d.image.mode == "RGB" and d.image.size == (d.width, d.height)
        assert 0 < d.width <= 65_535 and 0 < d.height <= 65_535 and d.width * d.height <= LIMITS["max_pixels"]
        reason = None
    assert time.perf_counter() - t < SECONDS
    return reason


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(GOOD)), seed=st.integers(0, 2**16), cut=st.floats(0.0, 1.0),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=6),
       splice=st.one_of(st.none(), st.binary(max_size=64)))
def test_mutated_good_files(kind: str, seed: int, cut: float, flips: list, splice: bytes | None) -> None:
    data = bytearray(GOOD[kind](f"WH-{seed}", np.random.default_rng(seed)))
    for pos, value in flips:
        data[int(pos * (len(data) - 1))] = value
    if splice is not None:  # foreign bytes inside a header or a metadata segment
        at = int(cut * (len(data) - 1))
        data[at:at] = splice
    elif cut < 0.95:
        data = data[: max(1, int(len(data) * cut))]
    _decode(bytes(data))


FORMATS = ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "TGA", "PCX", "SGI", "PPM", "ICO", "DDS"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(FORMATS), mode=st.sampled_from(["1", "L", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]),
       width=st.integers(1, 1500), height=st.integers(1, 60), exif=st.one_of(st.none(), st.binary(max_size=80)))
def test_generated_files_of_any_format_mode_and_shape(fmt: str, mode: str, width: int, height: int,
                                                      exif: bytes | None) -> None:
    im = gradient(width, height).convert(mode) if mode not in ("I;16", "I", "F") else Image.new(mode, (width, height))
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt, **({"exif": b"Exif\x00\x00" + exif} if exif is not None and fmt in ("JPEG", "PNG",
                                                                                                       "WEBP") else {}))
    except (OSError, ValueError, KeyError, TypeError):
        return  # Pillow cannot write this mode in this format
    reason = _decode(buf.getvalue())
    if fmt not in ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"):
        assert reason is not None and "JPEG, PNG, GIF, WebP, TIFF, BMP" in reason


@pytest.mark.parametrize("kind", sorted(BAD))
def test_every_bad_kind_is_refused_naming_its_problem(kind: str) -> None:
    from model.analyzers import limits_of

    make, words = BAD[kind]
    for seed in range(4):
        data = make(np.random.default_rng(seed))
        reason = _decode(data)
        if reason is None:  # decodes: the analyzers' shape limits refuse it (barcode runs first, then ocr)
            d = decode_image(data, **LIMITS)
            reason = next(r for r in (limits_of(a).refusal(a.name, d.image.size)
                                      for a in (BarcodeAnalyzer(), OcrAnalyzer())) if r)
        for w in words:
            assert w in reason, (kind, seed, reason)


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_every_good_kind_decodes_to_its_label(kind: str) -> None:
    d = decode_image(GOOD[kind]("WH-77", np.random.default_rng(77)), **LIMITS)
    assert BarcodeAnalyzer().analyze([d.image])[0].detections.data["value"] == ("WH-77",)
