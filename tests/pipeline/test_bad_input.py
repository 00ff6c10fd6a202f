"""Bad and odd images through a real worker process: each is processed correctly or fails with a reason a
person can act on; the worker keeps going and good images beside them are unaffected."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from services.db import session_scope
from services.ingest.register import register_and_send
from services.schema import BarcodeRow, Image, Job
from tests import images
from tests.pipeline.conftest import wait_for

pytestmark = pytest.mark.services

CASES = {
    # key: (bytes, expected status, words the reason must contain)
    "shelf/bad/empty.jpg": (images.empty(), "failed", "empty"),
    "shelf/bad/truncated.jpg": (images.truncated_jpeg(), "failed", "truncated"),
    "shelf/bad/notes.jpg": (images.text_as_jpg(), "failed", "not an image"),
    "shelf/bad/bomb.png": (images.decompression_bomb(), "failed", "pixel"),
    "shelf/odd/deep.png": (images.png16(), "succeeded", None),
    "shelf/odd/cmyk.jpg": (images.cmyk_jpeg(), "succeeded", None),
    "shelf/odd/rotated.jpg": (images.exif_rotated_jpeg(), "succeeded", None),
    "shelf/odd/anim.gif": (images.animated_gif(), "succeeded", None),
    "shelf/good/label-1.png": (images.label_png("WH-31001"), "succeeded", None),
    "shelf/good/label-2.png": (images.label_png("WH-31002"), "succeeded", None),
}


def test_bad_images_fail_with_reasons_and_the_worker_keeps_going(runtime, db_url, send_job, start_worker):
    infos = [runtime.store.put(key, data) for key, (data, _, _) in CASES.items()]
    worker = start_worker()
    regs = register_and_send(db_url, runtime.config, runtime.store.bucket, infos, send_job)

    def finished() -> bool:
        with session_scope(db_url) as s:
            return all(s.get(Job, r.job_id).status in ("succeeded", "failed") for r in regs)

    wait_for(finished, 120, "every job to finish")
    assert worker.proc.poll() is None, "the worker must survive bad input"
    with session_scope(db_url) as s:
        for reg in regs:
            job, image = s.get(Job, reg.job_id), s.get(Image, reg.image_id)
            data, status, words = CASES[image.key]
            assert job.status == status, (image.key, job.error)
            # the digest of the bytes the worker read, bad or good (empty bytes have one too)
            assert image.sha256 == hashlib.sha256(data).hexdigest(), image.key
            if status == "failed":
                assert words in job.error.lower() and image.key in job.error, job.error
            else:
                assert job.error is None and image.width and image.height
        rotated = s.execute(select(Image).where(Image.key == "shelf/odd/rotated.jpg")).scalar_one()
        assert (rotated.width, rotated.height) == (80, 120)  # stored upright: EXIF orientation 6 applied
        values = sorted(s.scalars(select(BarcodeRow.value).join(Image, Image.id == BarcodeRow.image_id)
                                  .where(Image.key.like("shelf/good/%"))))
        assert "WH-31001" in values and "WH-31002" in values
