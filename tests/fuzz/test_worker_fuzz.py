"""Fuzzed images mixed with good ones through the real worker on the real services: every good image succeeds
with the results a clean run of the engine gives, every bad one fails with a reason that names its problem, no
pool process is replaced, and peak resident memory per process stays under the configured cap.

CI runs 30 + 30; the long run by hand: ``VLWATCH_FUZZ_IMAGES=300 pytest tests/fuzz/test_worker_fuzz.py -s``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from sqlalchemy import func, select

from services.db import session_scope
from services.ingest.register import register_and_send
from services.schema import BarcodeRow, Image, Job, TextLineRow
from tests.fuzz.corpus import BAD, GOOD
from tests.processes import ROOT, Proc
from tests.waiting import wait_for

pytestmark = [pytest.mark.services, pytest.mark.fuzz]

N = max(1, int(os.environ.get("VLWATCH_FUZZ_IMAGES", "30")))
CAP_MB = 1536
CONFIG = {"profiles": {"labels": {"analyzers": ["barcode", "ocr"]}, "codes": {"analyzers": ["barcode"]}},
          "sources": {"shelf": {"prefix": "shelf/", "profile": "labels"}, "dock": {"prefix": "dock/", "profile": "codes"}}}


def _corpus() -> dict[str, tuple[bytes, object]]:
    """key -> (bytes, expected): the barcode value for a good image, the reason's words for a bad one."""
    from model.decode import decode_image
    from model.engines.barcode import BarcodeAnalyzer

    engine, out = BarcodeAnalyzer(), {}
    good, bad = sorted(GOOD), sorted(BAD)
    for i in range(N):
        kind, rng = good[i % len(good)], np.random.default_rng(i)
        data = GOOD[kind](f"WH-{i:04d}", rng)
        clean = engine.analyze([decode_image(data, max_bytes=1 << 26, max_pixels=80_000_000).image])[0]
        folder = "shelf" if i % 3 == 0 else "dock"  # a third through OCR as well
        out[f"{folder}/fuzz-good/{i:04d}-{kind}"] = (data, clean.detections.data["value"])
        kind = bad[i % len(bad)]
        make, words = BAD[kind]
        out[f"shelf/fuzz-bad/{i:04d}-{kind}"] = (make(np.random.default_rng(10_000 + i)), words)
    return out


def test_fuzzed_and_good_images_through_the_worker(db_url, redis_url, s3_settings, tmp_path: Path):
    import redis

    from services.config import load_config
    from services.settings import Settings
    from services.storage import S3Store
    from workers.app import make_app, sender_for

    redis.Redis.from_url(redis_url).flushdb()
    cfg = tmp_path / "vlwatch.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLWATCH_")}
    env.update({"VLWATCH_DATABASE_URL": db_url, "VLWATCH_BROKER_URL": redis_url,
                "VLWATCH_S3_ENDPOINT": s3_settings.endpoint, "VLWATCH_S3_ACCESS_KEY": s3_settings.access_key,
                "VLWATCH_S3_SECRET_KEY": s3_settings.secret_key, "VLWATCH_BUCKET": s3_settings.bucket,
                "VLWATCH_CONFIG": str(cfg), "VLWATCH_DATA_DIR": str(tmp_path / "data"),
                "VLWATCH_WORKER_MAX_MEMORY_MB": str(CAP_MB), "VLWATCH_TASK_TIME_LIMIT_SECONDS": "120",
                "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    corpus = _corpus()
    store = S3Store(s3_settings.endpoint, s3_settings.access_key, s3_settings.secret_key, s3_settings.bucket)
    infos = [store.put(key, data) for key, (data, _) in corpus.items()]
    worker = Proc(["worker", "--pool", "prefork", "--concurrency", "2"], env, tmp_path / "worker.log", ready=" ready.")
    try:
        pool = set(worker.children())
        config = load_config(cfg)
        t = time.monotonic()
        regs = register_and_send(db_url, config, store.bucket, infos, sender_for(make_app(Settings(broker_url=redis_url))))

        def finished() -> bool:
            worker.check_alive()
            with session_scope(db_url) as s:
                return s.scalar(select(func.count()).select_from(Job)
                                .where(Job.status.in_(["succeeded", "failed"]))) == len(regs)

        wait_for(finished, 120 + 6 * N, f"{len(regs)} jobs", poll=0.5)
        took = time.monotonic() - t
        peak = worker.peak_rss_mb()
        assert set(worker.children()) == pool, "a pool process was replaced"
    finally:
        worker.stop()
    assert "exited with" not in worker.log.read_text()
    with session_scope(db_url) as s:
        jobs = {key: (job, job_id) for key, job, job_id in s.execute(
            select(Image.key, Job, Job.id).join(Job, Job.image_id == Image.id))}
        problems = []
        for key, (data, expected) in corpus.items():
            job, job_id = jobs[key]
            if "/fuzz-good/" in key:
                values = tuple(s.scalars(select(BarcodeRow.value).where(BarcodeRow.job_id == job_id)))
                text = " ".join(s.scalars(select(TextLineRow.text).where(TextLineRow.job_id == job_id)))
                if job.status != "succeeded" or values != expected or (key.startswith("shelf/") and "WH-" not in text):
                    problems.append((key, job.status, job.error, values, text[:60]))
            elif job.status != "failed" or key not in job.error or not all(w in job.error for w in expected):
                problems.append((key, job.status, job.error, expected))
    report = {"good": N, "bad": N, "seconds": round(took, 1), "peak_rss_mb": {str(k): round(v) for k, v in peak.items()},
              "cap_mb": CAP_MB, "problems": len(problems)}
    print("\nworker fuzz:", json.dumps(report))
    assert problems == [], problems[:5]
    assert max(peak.values()) < CAP_MB, peak
