"""The analysis of a batch of jobs, stage by stage: claim -> fetch -> decode -> pair -> analyze -> commit.

Delivery is at-least-once, effects are exactly-once: jobs are claimed under a database lease (``workers.lease``);
a finished job is skipped; results are committed only while the lease is still ours, in one transaction with
the job's status and its outbox event (``workers.commit``). A task names a few jobs (those registered together);
the worker tops the batch up with other queued jobs of the same queue (up to ``batch_size``) so analyzers see
batches and database and storage round trips are shared; their own tasks, when they arrive, find them taken.

``pair`` fetches each job's previous image (``workers.pairing``) where its profile has checks that compare.
Bad input fails that job with a reason and the others go on; transient faults (object storage or database
unreachable) release the claims and raise ``TransientError``, and the task is retried with backoff.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any, Collection, Optional, Sequence

from sqlalchemy.exc import OperationalError

from model.decode import BadImage, decode_image
from services import metrics
from services.config import Profile
from services.storage import ObjectNotFound, StorageUnavailable
from workers.commit import commit
from workers.lease import claim, release, renew
from workers.pairing import Previous, previous_images
from workers.runtime import Runtime
from workers.work import Outcome, Work

log = logging.getLogger(__name__)


class TransientError(RuntimeError):
    """Storage or database unreachable: retry later; the jobs are left queued."""


def run_job(rt: Runtime, job_id: int, batch_size: Optional[int] = None) -> Outcome:
    """Run ``job_id`` (and other queued jobs claimed with it); returns ``job_id``'s outcome."""
    outcomes = run_batch(rt, [job_id], rt.settings.batch_size if batch_size is None else batch_size)
    return next(o for o in outcomes if o.job_id == job_id)


def run_batch(rt: Runtime, job_ids: Sequence[int], batch_size: int) -> list[Outcome]:
    """Claim ``job_ids`` (topped up with other queued jobs to ``batch_size``), run and commit them together."""
    claimed: list[int] = []
    try:
        leased_at = time.monotonic()
        work = [Work.of(c) for c in claim(rt.db_url, rt.worker_id, rt.settings.lease_seconds, job_ids,
                                          extra=batch_size - len(job_ids))]
        claimed = [w.job_id for w in work]
        skipped = [Outcome(j, "skipped") for j in job_ids if j not in claimed]
        if skipped:
            log.info("jobs %s skipped: finished already or held by a live lease", [o.job_id for o in skipped])
        if not work:
            return skipped
        check(rt, work)
        fetch(rt, work)
        decode(rt, work)
        pair(rt, work)
        analyze(rt, work, leased_at)
        t = time.perf_counter()
        outcomes = commit(rt.db_url, rt.worker_id, work, rt.config.source_zone)
        _count(work, outcomes, time.perf_counter() - t)
        return skipped + outcomes
    except (StorageUnavailable, OperationalError) as exc:
        if claimed:
            release(rt.db_url, rt.worker_id, claimed)
        raise TransientError(f"jobs {list(job_ids)}: {exc}") from exc


def _count(work: list[Work], outcomes: list[Outcome], commit_seconds: float) -> None:
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


def _live(work: list[Work]) -> list[Work]:
    return [w for w in work if w.failure is None]


def check(rt: Runtime, work: list[Work]) -> None:
    """Jobs that cannot run at all: claimed too often (the worker died each time) or of a profile removed from
    the configuration."""
    for w in work:
        if w.attempts > rt.settings.max_attempts:
            w.fail("worker_lost", f"gave up after {w.attempts - 1} attempts: the worker was lost each time "
                                  f"(killed or out of memory?) while analysing {w.key}")
        elif w.profile not in rt.config.profiles:
            w.fail("config", f"profile {w.profile!r} is not in the configuration file any more")


def fetch(rt: Runtime, work: list[Work]) -> None:
    """The objects' bytes, concurrently (object storage is I/O)."""

    def get(w: Work) -> None:
        t = time.perf_counter()
        try:
            w.data = rt.store.get(w.key)
        except ObjectNotFound:
            w.fail("missing_object", f"object {w.key!r} is not in bucket {rt.store.bucket!r} (deleted after upload?)")
        w.timings["fetch"] = time.perf_counter() - t

    live = _live(work)
    if len(live) == 1:
        get(live[0])
    else:
        list(rt.fetch_pool().map(get, live))


def decode(rt: Runtime, work: list[Work]) -> None:
    """Untrusted bytes to an upright RGB image and its facts (``model.decode``); a bad image fails its job."""
    for w in _live(work):
        t = time.perf_counter()
        try:
            w.decoded = decode_image(w.data, max_bytes=rt.settings.max_image_bytes,
                                     max_pixels=rt.settings.max_image_pixels)
        except BadImage as exc:
            w.fail("bad_image", f"bad image {w.key!r}: {exc.reason}")
        w.timings["decode"] = time.perf_counter() - t


def pair(rt: Runtime, work: list[Work]) -> None:
    """The previous image of each job whose profile has a ``with_previous`` check, fetched and decoded as the job's
    own; none when the source has none or it cannot be read any more (those checks then answer no_previous)."""
    wanting = [w for w in _live(work)
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


def analyze(rt: Runtime, work: list[Work], leased_at: float, skip: Collection[str] = ()) -> None:
    """Each profile's analyzers over its jobs' images, as one batch per analyzer. An analyzer that cannot run
    here fails its jobs saying so; one that raises on the batch is re-run image by image so only the image
    that breaks it fails. Leases are renewed after an analyzer once a quarter of the lease has passed.
    ``skip``: analyzers run elsewhere (the GPU worker's scheduler runs the VL2 ones, ``workers.gpu``)."""
    by_profile: dict[str, list[Work]] = defaultdict(list)
    for w in _live(work):
        by_profile[w.profile].append(w)
    for profile_name, group in by_profile.items():
        profile = rt.config.profiles[profile_name]
        for name in profile.analyzers:
            if name in skip:
                continue
            group = _live(group)
            if not group:
                break
            t = time.perf_counter()
            analyzer = load_analyzer(rt, name, profile, group)
            if analyzer is None:
                continue
            try:
                results = _run(analyzer, group)
            except Exception as exc:  # noqa: BLE001 - isolate the image that breaks the engine
                results = _one_by_one(analyzer, name, group, exc)
            share = (time.perf_counter() - t) / len(group)
            for w, r in zip(group, results):
                w.timings[name] = share
                if isinstance(r, str):
                    w.fail("analyzer_error", r)
                else:
                    w.results.append(r)
            if time.monotonic() - leased_at > rt.settings.lease_seconds / 4:
                leased_at = time.monotonic()
                renew(rt.db_url, rt.worker_id, rt.settings.lease_seconds, [w.job_id for w in group])


def load_analyzer(rt: Runtime, name: str, profile: Profile, group: list[Work]) -> Any:
    """The process's analyzer ``name`` as ``profile`` configures it; None after failing the jobs of ``group``
    with the reason it cannot run on this worker."""
    from model.analyzers import AnalyzerUnavailable

    try:
        return rt.analyzer(name, profile)
    except AnalyzerUnavailable as exc:
        for w in group:
            w.fail("analyzer_unavailable", f"analyzer {name} is not available on this worker: {exc}")
    except Exception as exc:  # noqa: BLE001 - a broken engine set-up fails its jobs, not the worker
        log.exception("analyzer %s failed to load", name)
        for w in group:
            w.fail("analyzer_unavailable",
                   f"analyzer {name} failed to load on this worker: {type(exc).__name__}: {exc}")
    return None


def _run(analyzer: Any, group: list[Work]) -> list:
    """The analyzer over the group's images (and their previous images, for an analyzer that compares)."""
    images = [w.decoded.image for w in group]
    if getattr(analyzer, "wants_previous", False):
        return analyzer.analyze(images, previous=[w.previous.image if w.previous else None for w in group])
    return analyzer.analyze(images)


def _one_by_one(analyzer: Any, name: str, group: list[Work], batch_exc: Exception) -> list:
    """The batch raised: run images one at a time so only the image that breaks the engine fails."""
    if len(group) == 1:
        return [f"analyzer {name} failed on {group[0].key!r}: {type(batch_exc).__name__}: {batch_exc}"]
    out: list = []
    for w in group:
        try:
            out.extend(_run(analyzer, [w]))
        except Exception as exc:  # noqa: BLE001
            log.exception("job %s: analyzer %s failed", w.job_id, name)
            out.append(f"analyzer {name} failed on {w.key!r}: {type(exc).__name__}: {exc}")
    return out
