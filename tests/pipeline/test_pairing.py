"""The previous image of a source (workers.pairing) on PostgreSQL: the same source's last successfully analysed
image before this one, by capture time, else upload time; ties by image id; none for a source's first image."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.db import session_scope
from services.schema import Image, Job, Source
from model.decode import CaptureTime
from workers.pairing import PreviousRef, previous_images

pytestmark = pytest.mark.services

T = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)


def test_previous_images(db_url):  # noqa: ANN001
    ids = {}
    with session_scope(db_url) as s:
        cam, other = Source(name="cam", profile="p"), Source(name="other", profile="p")
        s.add_all([cam, other])
        s.flush()
        for key, src, captured, uploaded, status in [
            ("a", cam, T, T + timedelta(hours=1), "succeeded"),
            ("b", cam, None, T + timedelta(minutes=5), "succeeded"),  # no EXIF: its upload time counts
            ("c", cam, T + timedelta(minutes=10), T, "failed"),  # not successfully analysed
            ("d", cam, T + timedelta(minutes=3), T, "queued"),  # not analysed yet
            ("e", other, T + timedelta(minutes=9), T, "succeeded"),  # another source
            ("f", cam, T + timedelta(minutes=5), T, "succeeded"),  # the same time as b, a later id
            ("new", cam, None, T + timedelta(minutes=12), "running"),
            ("orphan", None, T + timedelta(minutes=12), T, "running"),
        ]:
            img = Image(source_id=src.id if src else None, bucket="b", key=key, etag=key, size=1,
                        captured_at=captured, uploaded_at=uploaded)
            s.add(img)
            s.flush()
            s.add(Job(image_id=img.id, profile="p", queue="gpu", status=status))
            ids[key] = img.id

    def previous(key: str, captured: datetime | None) -> str | None:
        """``captured``: the capture time the worker read from the image's bytes (None without EXIF)."""
        capture = None if captured is None else CaptureTime(captured.replace(tzinfo=None), timedelta(0))
        got = previous_images(db_url, [(ids[key], capture)], lambda source: timezone.utc)
        assert set(got) <= {ids[key]}
        return got[ids[key]].key if got else None

    assert previous("new", None) == "f"  # upload time 08:12; f ties b at 08:05 and has the later id
    assert previous("new", T + timedelta(minutes=4)) == "a"  # its bytes say 08:04; d (08:03) is not analysed
    assert previous("f", T + timedelta(minutes=5)) == "b"  # a tie: the lower id is the earlier
    assert previous("b", None) == "a"
    assert previous("a", T) is None  # the source's first image
    assert previous("orphan", T + timedelta(minutes=12)) is None  # no source
    # a camera clock two hours ahead of UTC, read in its source's zone: 10:04 there is 08:04 UTC
    berlin_ish = previous_images(db_url, [(ids["new"], CaptureTime(T.replace(tzinfo=None) + timedelta(hours=2,
                                                                                                    minutes=4), None))],
                                 lambda source: timezone(timedelta(hours=2)) if source == "cam" else timezone.utc)
    assert berlin_ish[ids["new"]].key == "a"
    both = previous_images(db_url, [(ids["new"], None), (ids["b"], None)], lambda source: timezone.utc)
    assert both == {ids["new"]: PreviousRef(ids["f"], "f"), ids["b"]: PreviousRef(ids["a"], "a")}
