"""Capture time from EXIF: OffsetTimeOriginal where the camera wrote it, else the source's zone, else UTC."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from PIL import Image

from model.decode import CaptureTime, decode_image

BERLIN = ZoneInfo("Europe/Berlin")


def jpeg_taken_at(wall_clock: str, offset: str | None = None, tag: int = 0x9003) -> bytes:
    """A small JPEG whose EXIF says it was taken at ``wall_clock`` (``2026:01:15 23:30:00``), with an offset."""
    exif = Image.Exif()
    if tag == 0x0132:  # IFD0 DateTime, its offset in OffsetTime
        exif[0x0132] = wall_clock
        if offset is not None:
            exif.get_ifd(0x8769)[0x9010] = offset
    else:
        exif.get_ifd(0x8769)[0x9003] = wall_clock
        if offset is not None:
            exif.get_ifd(0x8769)[0x9011] = offset
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 90, 90)).save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def capture(data: bytes) -> CaptureTime | None:
    return decode_image(data, max_bytes=1 << 20, max_pixels=1 << 20).capture_time


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


@pytest.mark.parametrize("offset, zone, expected", [
    ("+01:00", timezone.utc, utc(2026, 1, 15, 22, 30)),  # the camera's offset wins over any zone
    ("+01:00", ZoneInfo("America/New_York"), utc(2026, 1, 15, 22, 30)),
    ("-05:30", BERLIN, utc(2026, 1, 16, 5, 0)),
    (None, BERLIN, utc(2026, 1, 15, 22, 30)),  # no offset: the source's zone (CET in winter)
    (None, timezone.utc, utc(2026, 1, 15, 23, 30)),  # no offset, no zone: UTC
    ("   :  ", BERLIN, utc(2026, 1, 15, 22, 30)),  # EXIF's "unknown" offset is no offset
])
def test_offset_time_original_else_source_zone_else_utc(offset, zone, expected) -> None:  # noqa: ANN001
    t = capture(jpeg_taken_at("2026:01:15 23:30:00", offset))
    assert t is not None and t.wall_clock == datetime(2026, 1, 15, 23, 30)
    assert t.in_utc(zone) == expected


def test_summer_time_and_datetime_with_offset_time() -> None:
    assert capture(jpeg_taken_at("2026:07:01 23:30:00")).in_utc(BERLIN) == utc(2026, 7, 1, 21, 30)  # CEST
    t = capture(jpeg_taken_at("2026:07:01 08:00:00", "+09:00", tag=0x0132))
    assert t.offset == timedelta(hours=9) and t.in_utc(BERLIN) == utc(2026, 6, 30, 23, 0)


def test_unreadable_offset_is_noted_and_the_zone_used() -> None:
    d = decode_image(jpeg_taken_at("2026:01:15 23:30:00", "+99:00"), max_bytes=1 << 20, max_pixels=1 << 20)
    assert d.capture_time.offset is None and d.capture_time.in_utc(BERLIN) == utc(2026, 1, 15, 22, 30)
    assert any("offset '+99:00' unreadable" in n for n in d.notes)


def test_no_exif_no_capture_time() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    assert capture(buf.getvalue()) is None
