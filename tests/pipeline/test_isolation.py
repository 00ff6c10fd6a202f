"""One job's failure never fails another; what ends an attempt is said; transient faults cost no attempt; leases
are renewed while an analyzer works; each process has its own lease owner id; per-analyzer limits and the time
limit fail a job with a reason. In-process pipeline runs on the real PostgreSQL and S3 server; the engines are
the real ones, wrapped where a test needs one that breaks or takes long."""

from __future__ import annotations

import io
import multiprocessing
import threading
import time
from dataclasses import replace

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from services.db import session_scope
from services.ingest.register import register_and_send
from services.schema import BarcodeRow, Image, Job, OutboxEvent
from services.storage import S3Store
from tests import images
from tests.waiting import wait_for
from workers.lease import claim, reconcile
from workers.pipeline import TransientError, run_batch
from workers.runtime import Runtime

pytestmark = pytest.mark.services


def _png(im: PILImage.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _qr(value: str, size: int = 160) -> bytes:
    """A QR code on a white square of ``size`` pixels (the marker a wrapped engine recognises an image by)."""
    qr = images.qr_image(value)
    im = PILImage.new("RGB", (size, size), "white")
    im.paste(qr, ((size - qr.width) // 2, (size - qr.height) // 2))
    return _png(im)


def _register(runtime: Runtime, db_url: str, items: dict[str, bytes]) -> dict[str, int]:
    """Objects under dock/ (profile ``codes``: barcode only); returns key -> job id. No task is sent."""
    infos = [runtime.store.put(key, data) for key, data in items.items()]
    regs = register_and_send(db_url, runtime.config, runtime.store.bucket, infos, lambda ids, q: None)
    return {r.key: r.job_id for r in regs}


def _job(db_url: str, job_id: int) -> Job:
    with session_scope(db_url) as s:
        return s.get(Job, job_id)


class Wrapped:
    """The real barcode engine, with one behaviour added for images of a given width."""

    name = "barcode"

    def __init__(self, width: int, behaviour: str, seconds: float = 0.0) -> None:
        from model.engines.barcode import BarcodeAnalyzer

        self.real, self.width, self.behaviour, self.seconds = BarcodeAnalyzer(), width, behaviour, seconds
        self.limits = getattr(self.real, "limits", None)

    def analyze(self, ims):  # noqa: ANN001, ANN201
        out = self.real.analyze(ims)
        marked = [im.width == self.width for im in ims]
        if any(marked) and self.behaviour == "slow":
            threading.Event().wait(self.seconds)  # an engine call that takes this long
        if self.behaviour == "broken":  # an engine bug: something that is not a result, found only at commit
            out = [None if m else r for m, r in zip(marked, out)]
        return out


def _with_engine(runtime: Runtime, engine: object, **settings: object) -> Runtime:
    rt = Runtime(replace(runtime.settings, **settings), runtime.config, runtime.store)
    rt.analyzer = lambda name, profile=None: engine  # type: ignore[method-assign]  # every analyzer is this one
    return rt


def test_a_batch_that_fails_as_a_whole_is_rerun_job_by_job(runtime, db_url):
    items = {f"dock/iso/good-{i}.png": _qr(f"WH-{i}") for i in range(4)}
    items["dock/iso/poison.png"] = _qr("WH-X", size=161)
    jobs = _register(runtime, db_url, items)
    rt = _with_engine(runtime, Wrapped(161, "broken"))
    first = run_batch(rt, sorted(jobs.values()), 16)
    assert {o.status for o in first} == {"released"}
    resent: list[list[int]] = []
    assert reconcile(db_url, lambda ids, q: resent.append(ids), requeue_after=600)["resent"] == len(jobs)
    assert sorted(resent) == sorted([[j] for j in jobs.values()])  # each one again, on its own
    for (job_id,) in resent:
        (outcome,) = run_batch(rt, [job_id], 16)  # claimed before: it runs alone, no top-up
        assert outcome.job_id == job_id
    with session_scope(db_url) as s:
        for key, job_id in jobs.items():
            job = s.get(Job, job_id)
            if key.endswith("poison.png"):
                assert job.status == "failed"
                assert "internal error" in job.error and "AttributeError" in job.error and key in job.error
            else:
                assert (job.status, job.error, job.attempts) == ("succeeded", None, 2)
                value = s.scalar(select(BarcodeRow.value).where(BarcodeRow.job_id == job_id))
                assert value == f"WH-{key.removesuffix('.png')[-1]}"
        assert s.scalar(select(func.count()).select_from(OutboxEvent)) == len(jobs)


def test_corrupt_exif_does_not_poison_its_batch(runtime, db_url):
    buf = io.BytesIO()
    images.gradient(64, 48).save(buf, format="JPEG", exif=b"Exif\x00\x00MM\x00")
    items = {"dock/exif/corrupt.jpg": buf.getvalue(), **{f"dock/exif/ok-{i}.png": _qr(f"E{i}") for i in range(3)}}
    jobs = _register(runtime, db_url, items)
    outcomes = run_batch(runtime, sorted(jobs.values()), 16)
    assert [o.status for o in outcomes] == ["succeeded"] * 4
    with session_scope(db_url) as s:
        image = s.execute(select(Image).where(Image.key == "dock/exif/corrupt.jpg")).scalar_one()
        assert (image.width, image.height, image.captured_at) == (64, 48, None)


def test_a_job_whose_worker_was_lost_each_time_gives_up_saying_so(runtime, db_url):
    from workers.lease import LOST_NOTE

    (job_id,) = _register(runtime, db_url, {"dock/lost/one.png": _qr("L1")}).values()
    for attempt in range(1, 4):  # three workers claim it and die: their leases expire
        (c,) = claim(db_url, f"dead-worker-{attempt}", 0.05, [job_id])
        assert c.attempts == attempt
        wait_for(lambda: reconcile(db_url, lambda ids, q: None, requeue_after=600)["reclaimed"] == 1, 10,
                 "the dead worker's lease to expire and the job to be reclaimed")
        assert _job(db_url, job_id).error == LOST_NOTE
    (outcome,) = run_batch(runtime, [job_id], 16)
    job = _job(db_url, job_id)
    assert (outcome.status, job.status) == ("failed", "failed")
    assert job.error.startswith("gave up on 'dock/lost/one.png' after 3 attempts")
    assert "lease expired" in job.error and "killed, ran out of memory" in job.error


def test_transient_storage_faults_cost_no_attempt(runtime, db_url):
    (job_id,) = _register(runtime, db_url, {"dock/outage/one.png": _qr("T1")}).values()
    down = Runtime(runtime.settings, runtime.config, S3Store("127.0.0.1:9", "k", "s", runtime.store.bucket))
    for _ in range(5):  # more than VLWATCH_MAX_ATTEMPTS (3) failures against an unreachable store
        with pytest.raises(TransientError):
            run_batch(down, [job_id], 16)
        job = _job(db_url, job_id)
        assert (job.status, job.attempts, job.lease_owner) == ("queued", 0, None)
    (outcome,) = run_batch(runtime, [job_id], 16)
    assert outcome.status == "succeeded" and _job(db_url, job_id).attempts == 1


def test_the_lease_is_renewed_while_one_analyzer_call_runs(runtime, db_url):
    """A 1 s lease and a 4 s engine call, a reconciler running all along: the job is never reclaimed."""
    (job_id,) = _register(runtime, db_url, {"dock/slow/one.png": _qr("S1", size=163)}).values()
    rt = _with_engine(runtime, Wrapped(163, "slow", seconds=4.0), lease_seconds=1.0)
    stop, reclaimed = threading.Event(), []

    def reconciler() -> None:
        while not stop.wait(0.2):
            reclaimed.append(reconcile(db_url, lambda ids, q: None, requeue_after=600)["reclaimed"])

    thread = threading.Thread(target=reconciler)
    thread.start()
    try:
        (outcome,) = run_batch(rt, [job_id], 16)
    finally:
        stop.set()
        thread.join()
    assert len(reclaimed) >= 10 and sum(reclaimed) == 0
    assert outcome.status == "succeeded" and _job(db_url, job_id).attempts == 1


def test_the_time_limit_splits_a_batch_then_fails_the_slow_job_alone(runtime, db_url):
    items = {"dock/time/slow.png": _qr("SLOW", size=165), "dock/time/quick.png": _qr("QUICK")}
    jobs = _register(runtime, db_url, items)
    rt = _with_engine(runtime, Wrapped(165, "slow", seconds=30.0), task_time_limit_seconds=1.5)
    t = time.monotonic()
    assert {o.status for o in run_batch(rt, sorted(jobs.values()), 16)} == {"released"}
    outcomes = {k: run_batch(rt, [j], 16)[0].status for k, j in jobs.items()}
    assert time.monotonic() - t < 15  # two time limits, not the engine's 30 s
    assert outcomes == {"dock/time/slow.png": "failed", "dock/time/quick.png": "succeeded"}
    error = _job(db_url, jobs["dock/time/slow.png"]).error
    assert "1.5-second time limit" in error and "analyze stage" in error and "dock/time/slow.png" in error


def test_analyzer_limits_refuse_a_thin_strip_and_a_tiny_tiff_before_ocr_runs(runtime, db_url):
    """The issue's 32x2000 PNG (OCR would scale it to 736x46000) and 198-byte 4x208 TIFF fail in seconds."""
    strip = PILImage.new("RGB", (32, 2000), "white")
    tiff = io.BytesIO()
    PILImage.new("L", (4, 208), 255).save(tiff, format="TIFF")
    infos = [runtime.store.put("shelf/limits/strip.png", _png(strip)),
             runtime.store.put("shelf/limits/tiny.tif", tiff.getvalue())]
    regs = register_and_send(db_url, runtime.config, runtime.store.bucket, infos, lambda ids, q: None)
    t = time.monotonic()
    outcomes = run_batch(runtime, [r.job_id for r in regs], 16)  # profile labels: barcode, then ocr
    assert time.monotonic() - t < 10
    assert [o.status for o in outcomes] == ["failed", "failed"]
    strip_reason, tiny_reason = (_job(db_url, r.job_id).error for r in regs)
    assert "32x2000" in strip_reason and "62.5 times as tall" in strip_reason and "ocr" in strip_reason
    assert "4x208" in tiny_reason and "under 8 pixels" in tiny_reason and "ocr" in tiny_reason


def _owner_in_child(rt: Runtime, out) -> None:  # noqa: ANN001
    out.put(rt.worker_id)


def test_each_process_has_its_own_lease_owner_id(runtime):
    parent = runtime.worker_id
    ctx = multiprocessing.get_context("fork")  # as the prefork pool makes its children
    out = ctx.Queue()
    children = [ctx.Process(target=_owner_in_child, args=(runtime, out)) for _ in range(2)]
    for p in children:
        p.start()
    ids = {out.get(timeout=30) for _ in children}
    for p in children:
        p.join(30)
    assert len(ids) == 2 and parent not in ids and runtime.worker_id == parent


def test_settings_derive_recovery_times_from_the_lease(settings):
    s = replace(settings, lease_seconds=10.0)
    assert (s.requeue_after, s.reconcile_every, s.hard_time_limit) == (20.0, 2.5, 660.0)
