"""``services.ingest.upload``: overlapping batches register every file once, in order, and report exactly."""

from __future__ import annotations

import io

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from services.db import session_scope
from services.ingest.upload import upload
from services.schema import Image, Job

pytestmark = pytest.mark.services


def _pngs(folder, n: int) -> None:  # noqa: ANN001
    for i in range(n):
        buf = io.BytesIO()
        PILImage.new("RGB", (8, 8), (i % 256, i // 256, 7)).save(buf, format="PNG")
        (folder / f"f{i:04d}.png").write_bytes(buf.getvalue())


def test_many_small_batches_in_flight_register_each_file_once(runtime, db_url, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    _pngs(folder, 150)
    (folder / "f0003.png").write_bytes((folder / "f0002.png").read_bytes())  # same content, other key: both count
    sent: list[tuple[list[int], str]] = []
    progress: list[int] = []
    first = upload(db_url, runtime.config, runtime.store, [folder], "shelf", lambda ids, q: sent.append((ids, q)),
                   progress.append, batch=8, threads=4, in_flight=3)
    assert (first.uploaded, first.skipped, sum(progress)) == (150, 0, 150)
    job_ids = [i for ids, _ in sent for i in ids]
    assert len(job_ids) == len(set(job_ids)) == 150 and {q for _, q in sent} == {"cpu"}
    with session_scope(db_url) as s:
        keys = s.scalars(select(Image.key).where(Image.key.like("shelf/f%"))).all()
        assert sorted(keys) == [f"shelf/f{i:04d}.png" for i in range(150)]
        assert s.scalar(select(func.count()).select_from(Job).where(Job.id.in_(job_ids), Job.sent_at.is_not(None))) \
            == 150
    (folder / "f0149.png").write_bytes(b"\x89PNG changed content")  # a new version of one file
    again = upload(db_url, runtime.config, runtime.store, [folder], "shelf", lambda ids, q: sent.append((ids, q)),
                   batch=8, threads=4, in_flight=3)
    assert (again.uploaded, again.skipped) == (1, 149)


def test_a_failed_put_stops_the_upload_and_keeps_what_was_registered(runtime, db_url, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    _pngs(folder, 40)
    real_put = runtime.store.put

    def put(key, data, content_type=None):  # noqa: ANN001, ANN202
        if key.endswith("f0030.png"):
            raise OSError("disk full on the S3 server")
        return real_put(key, data, content_type=content_type)

    runtime.store.put = put
    try:
        with pytest.raises(OSError, match="disk full"):
            upload(db_url, runtime.config, runtime.store, [folder], "dock", lambda ids, q: None, batch=8,
                   threads=2, in_flight=1)
    finally:
        runtime.store.put = real_put
    with session_scope(db_url) as s:
        keys = set(s.scalars(select(Image.key).where(Image.key.like("dock/f%"))).all())
    assert {f"dock/f{i:04d}.png" for i in range(24)} <= keys and "dock/f0030.png" not in keys
    report = upload(db_url, runtime.config, runtime.store, [folder], "dock", lambda ids, q: None)
    assert report.uploaded + report.skipped == 40 and report.uploaded == 40 - len(keys)
