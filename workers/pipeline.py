"""The analysis of a batch of jobs, stage by stage: claim -> check -> fetch -> decode -> pair -> analyze -> commit.

Delivery is at-least-once, effects are exactly-once: jobs are claimed under a database lease (``workers.lease``)
that a heartbeat thread renews while the batch runs; a finished job is skipped; results are committed only while
the lease is still ours, in one transaction with the job's status and its outbox event (``workers.commit``). A
task names a few jobs (those registered together); the worker tops the batch up with other fresh queued jobs of
the same queue (up to ``batch_size``) so analyzers see batches and database and storage round trips are shared.

``pair`` fetches each job's previous image (``workers.pairing``) where its profile has checks that compare;
``analyze`` runs the profiles' analyzers (``workers.analyze``). A job's failure never fails another job:
- bad input fails that job with a reason and the others go on (each stage catches what one image can cause);
- a batch that fails as a whole (an exception no stage expected, or the time limit) is split: its jobs go back
  to the queue and each runs again on its own (``workers.lease``: a job claimed before runs alone); a job that
  fails so on its own is failed with a reason that says what happened;
- transient faults (object storage or database unreachable) give the claims back with their attempt and raise
  ``TransientError``: the task is retried with backoff, later the reconciler sends it again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Optional, Sequence

from sqlalchemy.exc import OperationalError

from model.decode import BadImage, decode_image
from services import metrics
from services.ingest.register import SendJob, send_stamped
from services.storage import BadKey, ObjectNotFound, StorageUnavailable
from workers.analyze import analyze, live
from workers.commit import commit
from workers.lease import Heartbeat, claim, give_back, release
from workers.limits import JobTimeLimit, explain, out_of_memory, time_limit
from workers.pairing import Previous, previous_images
from workers.runtime import Runtime
from workers.work import Outcome, Work

log = logging.getLogger(__name__)

TRANSIENT = (StorageUnavailable, OperationalError)


class TransientError(RuntimeError):
    """Storage or database unreachable: retry later; the jobs are left queued."""


def run_job(rt: Runtime, job_id: int, batch_size: Optional[int] = None) -> Outcome:
    """Run ``job_id`` (and other queued jobs claimed with it); returns ``job_id``'s outcome."""
    outcomes = run_batch(rt, [job_id], rt.settings.batch_size if batch_size is None else batch_size)
    return next(o for o in outcomes if o.job_id == job_id)


def run_batch(rt: Runtime, job_ids: Sequence[int], batch_size: int,
              resend: Optional[SendJob] = None) -> list[Outcome]:
    """Claim ``job_ids`` (topped up with other queued jobs to ``batch_size``), run and commit them together.
    ``resend`` sends the jobs of a batch that failed as a whole again, one per task (else the reconciler does)."""
    try:
        _give_back_deferred(rt)
        work = [Work.of(c) for c in claim(rt.db_url, rt.worker_id, rt.settings.lease_seconds, job_ids,
                                          extra=batch_size - len(job_ids))]
    except OperationalError as exc:
        raise TransientError(f"jobs {list(job_ids)}: {exc}") from exc
    claimed = [w.job_id for w in work]
    skipped = [Outcome(j, "skipped") for j in job_ids if j not in claimed]
    if skipped:
        log.info("jobs %s skipped: finished already, held by another worker, or to run alone",
                 [o.job_id for o in skipped])
    if not work:
        return skipped
    with Heartbeat(rt.db_url, rt.worker_id, rt.settings.lease_seconds, claimed):
        return skipped + _run(rt, work, resend)


def _run(rt: Runtime, work: list[Work], resend: Optional[SendJob]) -> list[Outcome]:
    stage = "check"
    try:
        with time_limit(rt.settings.task_time_limit_seconds):
            for stage, run_stage in (("check", check), ("fetch", fetch), ("decode", decode), ("pair", pair),
                                     ("analyze", analyze)):
                run_stage(rt, work)
        stage = "commit"
        return _commit(rt, work)
    except TRANSIENT as exc:
        ids = [w.job_id for w in work]
        if not release(rt.db_url, rt.worker_id, ids, refund=True, resent=True):
            rt.deferred_give_back.update(ids)
        raise TransientError(f"jobs {ids}: {exc}") from exc
    except (Exception, JobTimeLimit) as exc:  # noqa: BLE001 - whatever broke the batch, no job fails for another
        return _batch_failed(rt, work, stage, exc, resend)


def _batch_failed(rt: Runtime, work: list[Work], stage: str, exc: BaseException,
                  resend: Optional[SendJob]) -> list[Outcome]:
    """The batch failed as a whole in ``stage``: a job alone is failed with a reason saying what happened;
    the jobs of a larger batch are released (their attempt counts) and run again one by one."""
    if isinstance(exc, JobTimeLimit):
        what = (f"ran past the {exc.seconds:g}-second time limit (VLWATCH_TASK_TIME_LIMIT_SECONDS) in the {stage} "
                "stage; make the image smaller or raise the limit")
    elif out_of_memory(exc):
        what = (f"ran out of memory in the {stage} stage (the worker's cap is VLWATCH_WORKER_MAX_MEMORY_MB="
                f"{rt.settings.worker_max_memory_mb}): {explain(exc)}; make the image smaller or raise the cap")
    else:
        log.exception("jobs %s: the %s stage failed", [w.job_id for w in work], stage)
        what = f"failed in the {stage} stage with an internal error: {explain(exc)}"
    if len(work) == 1:
        w = work[0]
        failed = Work(w.job_id, w.image_id, w.key, w.profile, w.attempts, w.queue, sha256=w.sha256,
                      timings=w.timings)
        failed.fail("batch_failed", f"analysis of {w.key!r} {what}")
        try:
            return _commit(rt, [failed])
        except TRANSIENT:
            raise
        except Exception:  # noqa: BLE001 - not even the failure commits: the next attempt (or the give-up) will
            log.exception("job %s: could not record its failure", w.job_id)
            release(rt.db_url, rt.worker_id, [w.job_id], refund=False, note=f"its last attempt {what}")
            return [Outcome(w.job_id, "released", what)]
    note = f"its batch of {len(work)} jobs {what}; it runs again on its own"
    log.warning("a batch of %d jobs %s; each job runs again on its own", len(work), what)
    release(rt.db_url, rt.worker_id, [w.job_id for w in work], refund=False, note=note, resent=resend is not None)
    if resend is not None:  # each was claimed before, so each goes in a task of its own
        send_stamped(rt.db_url, [(w.job_id, w.queue, w.attempts) for w in work], resend)
    return [Outcome(w.job_id, "released", note) for w in work]


def _give_back_deferred(rt: Runtime) -> None:
    """Attempts owed from a database outage (their release could not be written then) are given back now."""
    if rt.deferred_give_back:
        ids = sorted(rt.deferred_give_back)
        if give_back(rt.db_url, rt.worker_id, ids):
            rt.deferred_give_back.difference_update(ids)


def _commit(rt: Runtime, work: list[Work]) -> list[Outcome]:
    t = time.perf_counter()
    outcomes = commit(rt.db_url, rt.worker_id, work, rt.config.source_zone)
    count_finished(work, outcomes, time.perf_counter() - t)
    return outcomes


def count_finished(work: list[Work], outcomes: list[Outcome], commit_seconds: float) -> None:
    """Metrics of the jobs this batch finished (``services.metrics``); lost jobs count for the worker that won."""
    finished = {o.job_id: o.status for o in outcomes if o.status in ("succeeded", "failed")}
    metrics.STAGE_SECONDS.labels(stage="commit").observe(commit_seconds)
    for w in work:
        status = finished.get(w.job_id)
        if status is None:
            continue
        metrics.JOBS_FINISHED.labels(queue=w.queue, status=status).inc()
        if status == "failed":
            metrics.JOB_FAILURES.labels(reason=w.failure_class or "other").inc()
        for stage, seconds in w.timings.items():
            metrics.STAGE_SECONDS.labels(stage=stage).observe(seconds)


def check(rt: Runtime, work: list[Work]) -> None:
    """Jobs that cannot run at all: claimed too often (each attempt ended with its worker lost or its batch
    failing; transient faults do not count) or of a profile removed from the configuration."""
    for w in work:
        if w.attempts > rt.settings.max_attempts:
            w.fail("gave_up", f"gave up on {w.key!r} after {w.attempts - 1} attempts (VLWATCH_MAX_ATTEMPTS); the "
                              f"last: {w.note or 'no record of how it ended'}")
        elif w.profile not in rt.config.profiles:
            w.fail("config", f"profile {w.profile!r} is not in the configuration file any more")


def fetch(rt: Runtime, work: list[Work]) -> None:
    """The objects' bytes and their digests, concurrently (object storage is I/O; hashing releases the GIL)."""

    def get(w: Work) -> None:
        t = time.perf_counter()
        try:
            w.data = rt.store.get(w.key)
            w.sha256 = hashlib.sha256(w.data).hexdigest()
        except ObjectNotFound:
            w.fail("missing_object", f"object {w.key!r} is not in bucket {rt.store.bucket!r} (deleted after upload?)")
        except BadKey as exc:
            w.fail("bad_key", f"object {w.key!r} refused by the store: {exc}")
        w.timings["fetch"] = time.perf_counter() - t

    todo = live(work)
    if len(todo) == 1:
        get(todo[0])
    else:
        list(rt.fetch_pool().map(get, todo))


def decode(rt: Runtime, work: list[Work]) -> None:
    """Untrusted bytes to an upright RGB image and its facts (``model.decode``); a bad image fails its job."""
    for w in live(work):
        t = time.perf_counter()
        try:
            w.decoded = decode_image(w.data, max_bytes=rt.settings.max_image_bytes,
                                     max_pixels=rt.settings.max_image_pixels, max_scans=rt.settings.max_jpeg_scans)
        except BadImage as exc:
            w.fail("bad_image", f"bad image {w.key!r}: {exc.reason}")
        w.data = b""  # past decoding only the pixels are used: a batch of large images holds no second copy
        w.timings["decode"] = time.perf_counter() - t


def pair(rt: Runtime, work: list[Work]) -> None:
    """The previous image of each job whose profile has a ``with_previous`` check, fetched and decoded as the job's
    own; none when the source has none or it cannot be read any more (those checks then answer no_previous)."""
    wanting = [w for w in live(work)
               if any(c.with_previous for c in rt.config.profiles[w.profile].checks.values())]
    if not wanting:
        return
    t = time.perf_counter()
    refs = previous_images(rt.db_url, [(w.image_id, w.decoded.capture_time) for w in wanting], rt.config.source_zone)
    images: dict[int, Optional[Previous]] = {}  # one fetch per previous image, however many jobs it pairs
    for w in wanting:
        ref = refs.get(w.image_id)
        if ref is not None and ref.image_id not in images:
            try:
                image = decode_image(rt.store.get(ref.key), max_bytes=rt.settings.max_image_bytes,
                                     max_pixels=rt.settings.max_image_pixels).image
                images[ref.image_id] = Previous(ref.image_id, ref.key, image)
            except (ObjectNotFound, BadImage) as exc:
                log.warning("job %s: previous image %s cannot be read (%s); no pair", w.job_id, ref.key, exc)
                images[ref.image_id] = None
        w.previous = images.get(ref.image_id) if ref is not None else None
    share = (time.perf_counter() - t) / len(wanting)
    for w in wanting:
        w.timings["pair"] = share
