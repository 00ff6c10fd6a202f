"""The analysis of a batch of jobs, stage by stage: claim -> fetch -> decode -> analyze -> commit.

Delivery is at-least-once, effects are exactly-once: jobs are claimed under a database lease (``workers.lease``);
a finished job is skipped; results are committed only while the lease is still ours, in one transaction with
the job's status and its outbox event (``workers.commit``). A task names a few jobs (those registered together);
the worker tops the batch up with other queued jobs of the same queue (up to ``batch_size``) so analyzers see
batches and database and storage round trips are shared; their own tasks, when they arrive, find them taken.

Bad input fails that job with a reason and the others go on; transient faults (object storage or database
unreachable) release the claims and raise ``TransientError``, and the task is retried with backoff.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from sqlalchemy.exc import OperationalError

from model.decode import BadImage, DecodedImage, decode_image
from services.storage import ObjectNotFound, StorageUnavailable
from workers.commit import Outcome, commit
from workers.lease import Claimed, claim, release, renew
from workers.runtime import Runtime

log = logging.getLogger(__name__)


class TransientError(RuntimeError):
    """Storage or database unreachable: retry later; the jobs are left queued."""


@dataclass
class Work:
    """One claimed job on its way through the stages."""

    job_id: int
    image_id: int
    key: str
    profile: str
    attempts: int
    data: bytes = b""
    decoded: Optional[DecodedImage] = None
    results: list = field(default_factory=list)  # one AnalyzerResult per analyzer run
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    failure: Optional[str] = None  # why the job failed, in words a person can act on

    @classmethod
    def of(cls, c: Claimed) -> "Work":
        return cls(c.job_id, c.image_id, c.key, c.profile, c.attempts)


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
        analyze(rt, work, leased_at)
        return skipped + commit(rt.db_url, rt.worker_id, work)
    except (StorageUnavailable, OperationalError) as exc:
        if claimed:
            release(rt.db_url, rt.worker_id, claimed)
        raise TransientError(f"jobs {list(job_ids)}: {exc}") from exc


def _live(work: list[Work]) -> list[Work]:
    return [w for w in work if w.failure is None]


def check(rt: Runtime, work: list[Work]) -> None:
    """Jobs that cannot run at all: claimed too often (the worker died each time) or of a profile removed from
    the configuration."""
    for w in work:
        if w.attempts > rt.settings.max_attempts:
            w.failure = (f"gave up after {w.attempts - 1} attempts: the worker was lost each time "
                         f"(killed or out of memory?) while analysing {w.key}")
        elif w.profile not in rt.config.profiles:
            w.failure = f"profile {w.profile!r} is not in the configuration file any more"


def fetch(rt: Runtime, work: list[Work]) -> None:
    """The objects' bytes, concurrently (object storage is I/O)."""

    def get(w: Work) -> None:
        t = time.perf_counter()
        try:
            w.data = rt.store.get(w.key)
        except ObjectNotFound:
            w.failure = f"object {w.key!r} is not in bucket {rt.store.bucket!r} (deleted after upload?)"
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
            w.failure = f"bad image {w.key!r}: {exc.reason}"
        w.timings["decode"] = time.perf_counter() - t


def analyze(rt: Runtime, work: list[Work], leased_at: float) -> None:
    """Each profile's analyzers over its jobs' images, as one batch per analyzer. An analyzer that cannot run
    here fails its jobs saying so; one that raises on the batch is re-run image by image so only the image
    that breaks it fails. Leases are renewed after an analyzer once a quarter of the lease has passed."""
    from model.analyzers import AnalyzerUnavailable

    by_profile: dict[str, list[Work]] = defaultdict(list)
    for w in _live(work):
        by_profile[w.profile].append(w)
    for profile_name, group in by_profile.items():
        profile = rt.config.profiles[profile_name]
        for name in profile.analyzers:
            group = _live(group)
            if not group:
                break
            t = time.perf_counter()
            try:
                analyzer = rt.analyzer(name, profile.analyzer_options(name))
            except AnalyzerUnavailable as exc:
                for w in group:
                    w.failure = f"analyzer {name} is not available on this worker: {exc}"
                continue
            except Exception as exc:  # noqa: BLE001 - a broken engine set-up fails its jobs, not the worker
                log.exception("analyzer %s failed to load", name)
                for w in group:
                    w.failure = f"analyzer {name} failed to load on this worker: {type(exc).__name__}: {exc}"
                continue
            try:
                results = analyzer.analyze([w.decoded.image for w in group])
            except Exception as exc:  # noqa: BLE001 - isolate the image that breaks the engine
                results = _one_by_one(analyzer, name, group, exc)
            share = (time.perf_counter() - t) / len(group)
            for w, r in zip(group, results):
                w.timings[name] = share
                if isinstance(r, str):
                    w.failure = r
                else:
                    w.results.append(r)
            if time.monotonic() - leased_at > rt.settings.lease_seconds / 4:
                leased_at = time.monotonic()
                renew(rt.db_url, rt.worker_id, rt.settings.lease_seconds, [w.job_id for w in group])


def _one_by_one(analyzer: Any, name: str, group: list[Work], batch_exc: Exception) -> list:
    """The batch raised: run images one at a time so only the image that breaks the engine fails."""
    if len(group) == 1:
        return [f"analyzer {name} failed on {group[0].key!r}: {type(batch_exc).__name__}: {batch_exc}"]
    out: list = []
    for w in group:
        try:
            out.extend(analyzer.analyze([w.decoded.image]))
        except Exception as exc:  # noqa: BLE001
            log.exception("job %s: analyzer %s failed", w.job_id, name)
            out.append(f"analyzer {name} failed on {w.key!r}: {type(exc).__name__}: {exc}")
    return out
