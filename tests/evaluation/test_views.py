"""The current-results views on PostgreSQL and SQLite: an image analysed three times (twice successfully) shows
only its latest succeeded job's rows, per profile; failed jobs show their reason and whether they were superseded."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from services.db import session_scope
from services.schema import BarcodeRow, Image, Job, ObjectRow, Source, TextLineRow


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("db_url" if request.param == "postgresql" else "sqlite_url")


def test_current_views_pick_the_latest_succeeded_job_per_profile(url: str) -> None:
    box = {"x1": 0.0, "y1": 0.0, "x2": 5.0, "y2": 5.0}
    with session_scope(url) as s:
        src = Source(name="cam", profile="p")
        s.add(src)
        s.flush()
        img = Image(source_id=src.id, bucket="b", key="cam/1.jpg", etag="e", size=1)
        s.add(img)
        s.flush()
        jobs = [Job(image_id=img.id, profile=p, queue="cpu", status=st) for p, st in
                (("p", "succeeded"), ("p", "succeeded"), ("p", "failed"), ("gpu", "succeeded"), ("p", "queued"))]
        s.add_all(jobs)
        s.flush()
        old, new, failed, gpu, _ = jobs
        failed.error = "bad image"
        s.add_all([BarcodeRow(job_id=old.id, image_id=img.id, analyzer="barcode", format="QRCode", value="old", **box),
                   BarcodeRow(job_id=new.id, image_id=img.id, analyzer="barcode", format="QRCode", value="new", **box),
                   TextLineRow(job_id=old.id, image_id=img.id, analyzer="ocr", text="gone", **box),
                   ObjectRow(job_id=gpu.id, image_id=img.id, analyzer="vl2-ground", label="pallet", score=0.9, **box)])
        ids = (new.id, gpu.id, failed.id)
    with session_scope(url) as s:
        q = lambda sql: [tuple(r) for r in s.execute(text(sql))]  # noqa: E731
        assert sorted(q("SELECT id, profile FROM current_jobs")) == sorted([(ids[0], "p"), (ids[1], "gpu")])
        assert q("SELECT value FROM current_barcodes") == [("new",)]
        assert q("SELECT count(*) FROM current_text_lines") == [(0,)]
        assert q("SELECT label FROM current_objects") == [("pallet",)]
        assert sorted(q("SELECT kind, label, value, source FROM current_results")) == [
            ("barcodes", "QRCode", "new", "cam"), ("objects", "pallet", None, "cam")]
        assert q("SELECT value, read_by, key FROM sku_sightings") == [("new", "barcode", "cam/1.jpg")]
        # the failed job (id 3) came after the second success (id 2) of profile p: nothing later succeeded
        assert q("SELECT job_id, error, superseded FROM failed_jobs") == [(ids[2], "bad image", 0)]
        assert q("SELECT count(*) FROM barcodes") == [(2,)]  # nothing was deleted
