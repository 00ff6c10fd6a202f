"""At-least-once delivery, exactly-once effects: a worker killed mid-job, re-delivered tasks, re-runs."""

from __future__ import annotations

import io

import pytest
from PIL import Image as PILImage
from PIL import ImageDraw
from sqlalchemy import func, select

from services.db import session_scope
from services.ingest.register import register_and_send
from services.schema import Job, OutboxEvent, TextLineRow
from tests.pipeline.conftest import wait_for
from workers.pipeline import run_job

pytestmark = pytest.mark.services


def _busy_page(lines: int = 40) -> bytes:
    """A page of text that keeps the OCR engine busy for a while on 2 cores."""
    img = PILImage.new("RGB", (2400, 60 * lines + 40), "white")
    draw = ImageDraw.Draw(img)
    from PIL import ImageFont

    font = ImageFont.load_default(size=36)
    for i in range(lines):
        draw.text((40, 20 + 60 * i), f"LINE {i:03d} PALLET WH-{10000 + i} BAY {i % 9} AISLE {i % 13}", fill="black",
                  font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _status(db_url: str, job_id: int) -> str:
    with session_scope(db_url) as s:
        return s.get(Job, job_id).status


def test_worker_killed_mid_job_another_finishes_results_once(runtime, db_url, send_job, start_worker):
    info = runtime.store.put("shelf/busy-page.png", _busy_page(), content_type="image/png")
    first = start_worker()
    (reg,) = register_and_send(db_url, runtime.config, runtime.store.bucket, [info], send_job)
    wait_for(lambda: _status(db_url, reg.job_id) == "running", 60, "the first worker to claim the job", poll=0.02)
    first.kill()  # SIGKILL: no cleanup, the job stays 'running' with a lease
    assert _status(db_url, reg.job_id) == "running"
    start_worker()
    # The lease (4 s in these tests) expires; the new worker's reconciler reclaims the job and re-sends it.
    wait_for(lambda: _status(db_url, reg.job_id) == "succeeded", 120, "the second worker to finish the job")
    with session_scope(db_url) as s:
        job = s.get(Job, reg.job_id)
        assert job.attempts == 2
        lines = s.scalars(select(TextLineRow.text).where(TextLineRow.job_id == job.id)).all()
        assert len(lines) == len(set(lines)) and len(lines) >= 30  # each line once
        assert s.scalar(select(func.count()).select_from(OutboxEvent)) == 1


def test_redelivered_task_is_skipped_and_rerun_never_duplicates(runtime, db_url):
    info = runtime.store.put("shelf/page.png", _busy_page(3), content_type="image/png")
    (reg,) = register_and_send(db_url, runtime.config, runtime.store.bucket, [info], lambda j, q: None)
    assert run_job(runtime, reg.job_id).status == "succeeded"
    with session_scope(db_url) as s:
        n_lines = s.scalar(select(func.count()).select_from(TextLineRow))
    assert n_lines >= 3
    assert run_job(runtime, reg.job_id).status == "skipped"  # a second delivery of the same task
    with session_scope(db_url) as s:
        job = s.get(Job, reg.job_id)
        job.status = "queued"  # an operator re-queues the job: results are replaced, not added
    assert run_job(runtime, reg.job_id).status == "succeeded"
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(TextLineRow)) == n_lines
        assert s.get(Job, reg.job_id).attempts == 2


def test_lost_lease_discards_results(runtime, db_url):
    """A worker whose lease was taken over must not write results."""
    from workers.commit import commit
    from workers.lease import claim
    from workers.work import Work

    info = runtime.store.put("shelf/lease.png", _busy_page(2), content_type="image/png")
    (reg,) = register_and_send(db_url, runtime.config, runtime.store.bucket, [info], lambda j, q: None)
    assert [c.job_id for c in claim(db_url, runtime.worker_id, 60, [reg.job_id])] == [reg.job_id]
    with session_scope(db_url) as s:
        s.get(Job, reg.job_id).lease_owner = "someone-else"
    (out,) = commit(db_url, runtime.worker_id, [Work(reg.job_id, reg.image_id, info.key, "labels", 1)])
    assert out.status == "lost"
    with session_scope(db_url) as s:
        assert s.get(Job, reg.job_id).status == "running"
        assert s.scalar(select(func.count()).select_from(OutboxEvent)) == 0
