"""The memory cap of a worker process: an image whose analysis needs more fails with a reason saying so, and the
same process goes on with the next job."""

from __future__ import annotations

import io

import pytest
from PIL import Image as PILImage

from services.db import session_scope
from services.ingest.register import register_and_send
from services.schema import Job
from tests import images
from tests.pipeline.conftest import wait_for

pytestmark = pytest.mark.services


def _png(im: PILImage.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_an_image_past_the_memory_cap_fails_and_the_worker_goes_on(runtime, db_url, send_job, start_worker):
    big = _png(PILImage.new("RGB", (8944, 8944), (200, 200, 200)))  # 80 MP, ~1 GB to decode and scan; 0.3 MB here
    small = _png(images.qr_image("WH-CAP-1"))
    infos = [runtime.store.put("dock/cap/big.png", big), runtime.store.put("dock/cap/small.png", small)]
    worker = start_worker(VLWATCH_WORKER_MAX_MEMORY_MB="800")
    pid = worker.proc.pid
    regs = register_and_send(db_url, runtime.config, runtime.store.bucket, infos, send_job)

    def finished() -> bool:
        with session_scope(db_url) as s:
            return all(s.get(Job, r.job_id).status in ("succeeded", "failed") for r in regs)

    wait_for(finished, 180, "both jobs")
    with session_scope(db_url) as s:
        big_job, small_job = (s.get(Job, r.job_id) for r in regs)
        assert big_job.status == "failed", big_job.error
        assert "out of memory" in big_job.error and "VLWATCH_WORKER_MAX_MEMORY_MB=800" in big_job.error
        assert "dock/cap/big.png" in big_job.error
        assert small_job.status == "succeeded", small_job.error
    assert worker.proc.poll() is None and worker.proc.pid == pid  # the same process, still running
    assert "exited with" not in worker.log.read_text()
