"""Upload -> queue -> worker process -> SQL -> signed webhook, on PostgreSQL, Redis, SeaweedFS and Celery."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from minio import Minio
from PIL import Image as PILImage
from sqlalchemy import func, select

from services.db import session_scope
from services.ingest.register import register_and_send
from services.ingest.scan import scan
from services.ingest.upload import upload
from services.schema import BarcodeRow, Image, Job, OutboxEvent, TextLineRow
from tests.pipeline.conftest import ROOT, wait_for

pytestmark = pytest.mark.services

SAMPLES = ROOT / "samples"


def _expected() -> dict:
    return json.loads((SAMPLES / "expected.json").read_text())


def _label_files() -> list[Path]:
    return sorted(p for p in SAMPLES.iterdir() if p.name in _expected() and _expected()[p.name].get("barcodes"))


def _jobs_done(db_url: str, n: int) -> bool:
    with session_scope(db_url) as s:
        done = s.scalar(select(func.count()).select_from(Job).where(Job.status.in_(["succeeded", "failed"])))
    return done >= n


def test_upload_twice_makes_one_job_and_results_land(runtime, db_url, send_job, start_worker, tmp_path):
    files = _label_files()[:3]
    assert files, "samples/ must hold label images with barcodes"
    folder = tmp_path / "in"
    folder.mkdir()
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())
    start_worker()
    first = upload(db_url, runtime.config, runtime.store, [folder], "shelf", send_job)
    again = upload(db_url, runtime.config, runtime.store, [folder], "shelf", send_job)
    assert (first.uploaded, first.skipped) == (len(files), 0)
    assert (again.uploaded, again.skipped) == (0, len(files))
    wait_for(lambda: _jobs_done(db_url, len(files)), 120, "jobs to finish")
    expected = _expected()
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == len(files)
        for f in files:
            image = s.execute(select(Image).where(Image.key == f"shelf/{f.name}")).scalar_one()
            job = s.execute(select(Job).where(Job.image_id == image.id)).scalar_one()
            assert job.status == "succeeded", job.error
            assert set(job.timings) >= {"fetch", "decode", "barcode", "ocr"}
            assert {entry["analyzer"] for entry in job.lineage} == {"barcode", "ocr"}
            values = set(s.scalars(select(BarcodeRow.value).where(BarcodeRow.job_id == job.id)))
            assert values == set(expected[f.name]["barcodes"])
            text = " ".join(s.scalars(select(TextLineRow.text).where(TextLineRow.job_id == job.id)))
            for sku in expected[f.name].get("skus", []):
                assert sku.replace(" ", "") in text.replace(" ", "")
            with PILImage.open(f) as im:
                assert (image.width, image.height) == im.size
            for b in s.scalars(select(BarcodeRow).where(BarcodeRow.job_id == job.id)):
                assert 0 <= b.x1 < b.x2 <= image.width and 0 <= b.y1 < b.y2 <= image.height
            events = s.scalars(select(OutboxEvent).where(OutboxEvent.job_id == job.id)).all()
            assert [e.type for e in events] == ["job.succeeded"]


def test_camera_put_is_found_by_scan_once(runtime, db_url, send_job, s3_settings, start_worker):
    """An object PUT by a plain S3 client (a camera) is registered by the scanner, once."""
    client = Minio(s3_settings.endpoint, s3_settings.access_key, s3_settings.secret_key, secure=False)
    data = _label_files()[0].read_bytes()
    client.put_object(s3_settings.bucket, "dock/cam-7/frame-0001.png", io.BytesIO(data), len(data),
                      content_type="image/png")
    # The bucket is the session's: scan only this test's camera folder.
    assert scan(db_url, runtime.config, runtime.store, send_job, prefix="dock/cam-7/") == 1
    assert scan(db_url, runtime.config, runtime.store, send_job, prefix="dock/cam-7/") == 0
    start_worker()
    wait_for(lambda: _jobs_done(db_url, 1), 60, "the scanned job")
    with session_scope(db_url) as s:
        job = s.execute(select(Job)).scalar_one()
        assert (job.status, job.profile) == ("succeeded", "codes")
        assert s.scalar(select(func.count()).select_from(BarcodeRow)) >= 1
        assert s.scalar(select(func.count()).select_from(TextLineRow)) == 0  # the dock profile runs barcodes only


def test_task_is_sent_only_after_commit(runtime, db_url):
    """At the moment a task is sent, another connection already sees the committed job."""
    seen = []

    def send_job(job_ids: list[int], queue: str) -> None:
        with session_scope(db_url) as s:  # a separate connection: sees committed rows only
            seen.extend((job_id, queue, s.get(Job, job_id).status) for job_id in job_ids)

    data = _label_files()[0].read_bytes()
    info = runtime.store.put("shelf/after-commit.png", data, content_type="image/png")
    regs = register_and_send(db_url, runtime.config, runtime.store.bucket, [info], send_job)
    assert [(r.job_id, "cpu", "queued") for r in regs] == seen
    with session_scope(db_url) as s:
        assert s.get(Job, regs[0].job_id).sent_at is not None


def test_a_reconciler_pass_between_commit_and_send_sends_nothing_twice(runtime, db_url):
    """Registration stamps its jobs sent in the transaction that queues them: a reconciler pass that runs after
    that commit and before the send (another worker's, say) finds nothing to send."""
    from workers.lease import reconcile

    sent: list[int] = []
    passes: list[dict[str, int]] = []

    def send_job(job_ids: list[int], queue: str) -> None:
        passes.append(reconcile(db_url, lambda js, q: sent.extend(js), requeue_after=600))  # before this send
        sent.extend(job_ids)

    info = runtime.store.put("shelf/one-send.png", _label_files()[0].read_bytes())
    (reg,) = register_and_send(db_url, runtime.config, runtime.store.bucket, [info], send_job)
    assert passes == [{"reclaimed": 0, "resent": 0}]
    assert sent == [reg.job_id]


def test_broker_down_leaves_job_queued_and_reconciler_resends(runtime, db_url, send_job):
    from workers.lease import reconcile

    def broken(job_ids: list[int], queue: str) -> None:
        raise ConnectionError("broker unreachable")

    info = runtime.store.put("shelf/broker-down.png", _label_files()[0].read_bytes())
    (reg,) = register_and_send(db_url, runtime.config, runtime.store.bucket, [info], broken)
    with session_scope(db_url) as s:
        job = s.get(Job, reg.job_id)
        assert (job.status, job.sent_at) == ("queued", None)
    resent = []
    assert reconcile(db_url, lambda js, q: resent.extend(js), requeue_after=600) == {"reclaimed": 0, "resent": 1}
    assert resent == [reg.job_id]
    assert reconcile(db_url, lambda js, q: resent.extend(js), requeue_after=600)["resent"] == 0
