"""The analysis of jobs: claim -> fetch -> decode -> analyze -> commit results, status and outbox together.

Delivery is at-least-once, effects are exactly-once: jobs are claimed with a database lease; a finished job is
skipped; results are written only while the lease is still ours, in the same transaction as the job status and
the outbox event. A task names a few jobs (those registered together); the worker tops the batch up with other
queued jobs of the same queue (up to ``batch_size``) so analyzers see batches and database and storage round trips
are shared. Their own tasks, when they arrive, find the jobs taken and are skipped.

Bad input fails that job with a reason; transient faults (storage or database unreachable) release the claims
and raise ``TransientError`` so the task retries with backoff.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Optional, Sequence

from sqlalchemy import Integer, bindparam, delete, insert, or_, select, update
from sqlalchemy.exc import OperationalError

from services.db import get_engine, session_scope
from services.events import PAYLOAD_VERSION, event_row
from services.schema import RESULT_TABLES, Image, Job, JobStatus, OutboxEvent, Source, utcnow
from services.storage import ObjectNotFound, StorageUnavailable
from model.decode import BadImage, decode_image
from workers.runtime import Runtime

log = logging.getLogger(__name__)

class TransientError(RuntimeError):
    """Storage or database unreachable: retry later; the jobs are left queued."""


@dataclass(frozen=True)
class Outcome:
    job_id: int
    status: str  # succeeded, failed, skipped, lost (lease taken over by another worker)
    reason: Optional[str] = None


@dataclass
class Work:
    """One claimed job on its way through the stages."""

    job_id: int
    image_id: int
    key: str
    profile: str
    attempts: int
    data: bytes = b""
    decoded: Any = None
    results: list = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    failure: Optional[str] = None


def claim(rt: Runtime, job_ids: Sequence[int], extra: int = 0) -> list[int]:
    """Lease those of ``job_ids`` that are queued (or running with an expired lease), plus up to ``extra`` other
    queued jobs of the same queue, oldest first. Returns the claimed ids ([] when none was ours to run)."""
    return [w.job_id for w in _claim(rt, job_ids, extra)]


@functools.lru_cache(maxsize=4)
def _claim_statements(dialect: str) -> tuple[Any, Any, Any]:
    """Built once per process (building them cost more CPU than running them): the claim of named jobs (``ids``)
    and of other queued ones (``of_queue``, ``extra``), both with ``now``, ``owner``, ``until``; on SQLite the select
    of the claimed jobs' keys (``image_ids``), else None."""
    j, im = Job.__table__, Image.__table__
    now = bindparam("now", type_=j.c.started_at.type)
    lease = {"status": JobStatus.running.value, "lease_owner": bindparam("owner", type_=j.c.lease_owner.type),
             "started_at": now, "lease_expires_at": bindparam("until", type_=j.c.lease_expires_at.type),
             "attempts": j.c.attempts + 1}
    named = j.c.id.in_(bindparam("ids", expanding=True)) & or_(
        j.c.status == JobStatus.queued.value, (j.c.status == JobStatus.running.value) & (j.c.lease_expires_at < now))
    more = (select(j.c.id).where(j.c.status == JobStatus.queued.value, j.c.queue == bindparam("of_queue"))
            .order_by(j.c.id).limit(bindparam("extra", type_=Integer)))
    pg = dialect == "postgresql"
    if pg:
        more = more.with_for_update(skip_locked=True)
    others = j.c.id.in_(more.scalar_subquery()) & (j.c.status == JobStatus.queued.value)
    # SQLite's RETURNING names only the updated table: the keys come from a select after
    returning = ((j.c.id, j.c.image_id, im.c.key, j.c.profile, j.c.attempts, j.c.queue) if pg
                 else (j.c.id, j.c.image_id, j.c.profile, j.c.attempts, j.c.queue))

    def take(where: Any) -> Any:
        return update(j).where(where, *([im.c.id == j.c.image_id] if pg else [])).values(**lease).returning(*returning)

    keys = None if pg else select(im.c.id, im.c.key).where(im.c.id.in_(bindparam("image_ids", expanding=True)))
    return take(named), take(others), keys


def _claim(rt: Runtime, job_ids: Sequence[int], extra: int = 0) -> list[Work]:
    """``claim``, returning the claimed jobs as ``Work`` (ordered by id). PostgreSQL: a statement per step, each
    an ``UPDATE jobs ... FROM images ... RETURNING`` that leases and loads at once (the extra jobs picked with
    ``FOR UPDATE SKIP LOCKED``); SQLite, whose RETURNING cannot name ``images``: a select of the keys after."""
    now = utcnow()
    params = {"now": now, "owner": rt.worker_id, "until": now + timedelta(seconds=rt.settings.lease_seconds)}
    with get_engine(rt.db_url).begin() as conn:
        named, others, keys = _claim_statements(conn.dialect.name)

        def take(stmt: Any, more: dict[str, Any]) -> list[tuple[Work, str]]:
            rows = conn.execute(stmt, {**params, **more}).all()
            if keys is not None:  # SQLite: (id, image_id, profile, attempts, queue) -> with the key after image_id
                found = dict(conn.execute(keys, {"image_ids": [r[1] for r in rows]}).all()) if rows else {}
                rows = [(r[0], r[1], found[r[1]], *r[2:]) for r in rows]
            return [(Work(i, image_id, key, profile, attempts), queue)
                    for i, image_id, key, profile, attempts, queue in rows]

        claimed = take(named, {"ids": list(job_ids)})
        if claimed and extra > 0:
            claimed += take(others, {"of_queue": claimed[0][1], "extra": extra})
    return sorted((w for w, _ in claimed), key=lambda w: w.job_id)


def _extend_leases(rt: Runtime, job_ids: list[int]) -> None:
    with session_scope(rt.db_url) as s:
        s.execute(update(Job).where(Job.id.in_(job_ids), Job.lease_owner == rt.worker_id).values(
            lease_expires_at=utcnow() + timedelta(seconds=rt.settings.lease_seconds)))


def _release(rt: Runtime, job_ids: list[int]) -> None:
    try:
        with session_scope(rt.db_url) as s:
            s.execute(update(Job).where(Job.id.in_(job_ids), Job.lease_owner == rt.worker_id,
                                        Job.status == JobStatus.running.value)
                      .values(status=JobStatus.queued.value, lease_owner=None, lease_expires_at=None))
    except OperationalError:
        log.warning("jobs %s: could not release the claims; their leases will expire", job_ids)


def run_job(rt: Runtime, job_id: int, batch_size: Optional[int] = None) -> Outcome:
    """Run ``job_id`` (and other queued jobs claimed with it); returns ``job_id``'s outcome."""
    outcomes = run_batch(rt, [job_id], rt.settings.batch_size if batch_size is None else batch_size)
    return next(o for o in outcomes if o.job_id == job_id)


def run_batch(rt: Runtime, job_ids: Sequence[int], batch_size: int) -> list[Outcome]:
    """Claim ``job_ids`` (topped up with other queued jobs to ``batch_size``) and run them together."""
    claimed: list[int] = []
    try:
        leased_at = time.monotonic()
        work = _claim(rt, job_ids, extra=batch_size - len(job_ids))
        claimed = [w.job_id for w in work]
        skipped = [Outcome(j, "skipped") for j in job_ids if j not in claimed]
        if skipped:
            log.info("jobs %s skipped: finished already or held by a live lease", [o.job_id for o in skipped])
        return skipped + (_run_claimed(rt, work, leased_at) if work else [])
    except (StorageUnavailable, OperationalError) as exc:
        if claimed:
            _release(rt, claimed)
        raise TransientError(f"jobs {list(job_ids)}: {exc}") from exc


def _fetch(rt: Runtime, w: Work) -> None:
    t = time.perf_counter()
    try:
        w.data = rt.store.get(w.key)
    except ObjectNotFound:
        w.failure = f"object {w.key!r} is not in bucket {rt.store.bucket!r} (deleted after upload?)"
    w.timings["fetch"] = time.perf_counter() - t


def _decode(rt: Runtime, w: Work) -> None:
    t = time.perf_counter()
    try:
        w.decoded = decode_image(w.data, max_bytes=rt.settings.max_image_bytes,
                                 max_pixels=rt.settings.max_image_pixels)
    except BadImage as exc:
        w.failure = f"bad image {w.key!r}: {exc.reason}"
    w.timings["decode"] = time.perf_counter() - t


def _run_claimed(rt: Runtime, work: list[Work], leased_at: Optional[float] = None) -> list[Outcome]:
    """``leased_at``: ``time.monotonic()`` from before the claim; leases are renewed after an analyzer once a
    quarter of the lease has passed since (a transaction per renewal: not after every fast analyzer)."""
    from model.analyzers import AnalyzerUnavailable

    leased_at = time.monotonic() if leased_at is None else leased_at
    for w in work:
        if w.attempts > rt.settings.max_attempts:
            w.failure = (f"gave up after {w.attempts - 1} attempts: the worker was lost each time "
                         f"(killed or out of memory?) while analysing {w.key}")
        elif w.profile not in rt.config.profiles:
            w.failure = f"profile {w.profile!r} is not in the configuration file any more"
    live = [w for w in work if w.failure is None]
    if len(live) > 1:  # object storage is I/O: fetch concurrently
        list(rt.fetch_pool().map(lambda w: _fetch(rt, w), live))
    else:
        for w in live:
            _fetch(rt, w)
    for w in work:
        if w.failure is None:
            _decode(rt, w)

    by_profile: dict[str, list[Work]] = defaultdict(list)
    for w in work:
        if w.failure is None:
            by_profile[w.profile].append(w)
    for profile_name, group in by_profile.items():
        profile = rt.config.profiles[profile_name]
        for name in profile.analyzers:
            group = [w for w in group if w.failure is None]
            if not group:
                break
            t = time.perf_counter()
            analyzer = None
            try:
                analyzer = rt.analyzer(name, profile.phrases if name == "vl2-ground" else ())
                results = analyzer.analyze([w.decoded.image for w in group])
            except AnalyzerUnavailable as exc:
                for w in group:
                    w.failure = f"analyzer {name} is not available on this worker: {exc}"
                continue
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
                _extend_leases(rt, [w.job_id for w in group])
    return commit(rt, work)


def _one_by_one(analyzer: Any, name: str, group: list[Work], batch_exc: Exception) -> list:
    """The batch raised: run images one at a time so only the image that breaks the engine fails."""
    if analyzer is None or len(group) == 1:
        return [f"analyzer {name} failed on {w.key!r}: {type(batch_exc).__name__}: {batch_exc}" for w in group]
    out: list = []
    for w in group:
        try:
            out.extend(analyzer.analyze([w.decoded.image]))
        except Exception as exc:  # noqa: BLE001
            log.exception("job %s: analyzer %s failed", w.job_id, name)
            out.append(f"analyzer {name} failed on {w.key!r}: {type(exc).__name__}: {exc}")
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _iso(t: Optional[datetime]) -> Optional[str]:
    return t.isoformat().replace("+00:00", "Z") if t is not None else None


def _captured_at(image: Any) -> Optional[datetime]:
    """EXIF DateTimeOriginal (EXIF has no zone: read as UTC)."""
    try:
        exif = image.getexif()
        raw = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)
        return datetime.strptime(str(raw), "%Y:%m:%d %H:%M:%S").replace(tzinfo=timezone.utc) if raw else None
    except (ValueError, AttributeError, KeyError):
        return None


def _rows(result: Any, job_id: int, image_id: int) -> tuple[str, list[dict[str, Any]]]:
    det = result.detections
    ids = {"job_id": job_id, "image_id": image_id, "analyzer": result.lineage.analyzer}
    return det.kind, [ids | r for r in det.to_rows()]


def commit(rt: Runtime, work: list[Work]) -> list[Outcome]:
    """For every job still leased to us, in one transaction: its results (replacing any earlier ones), image
    facts, final status, and its job.succeeded / job.failed event. Core statements, a handful per batch: the jobs
    locked with their images and sources in one select; results deleted only for jobs run before (a job's first
    attempt has none: ``attempts`` counts claims, and results are only written under a claim); an executemany per
    table for the rest."""
    outcomes: list[Outcome] = []
    ids = [w.job_id for w in work]
    with get_engine(rt.db_url).begin() as conn:
        jobs = {r.id: r for r in conn.execute(_commit_select(), {"ids": ids})}  # each with its image's columns
        mine = []
        for w in work:
            job = jobs[w.job_id]
            if job.status == JobStatus.running.value and job.lease_owner == rt.worker_id:
                mine.append(w)
            else:
                log.warning("job %s: lease lost to %s; results discarded", w.job_id, job.lease_owner)
                outcomes.append(Outcome(w.job_id, "lost"))
        if not mine:
            return outcomes
        rerun = [w.job_id for w in mine if jobs[w.job_id].attempts > 1]
        for table in RESULT_TABLES.values() if rerun else ():  # a re-run replaces, never duplicates
            conn.execute(_statement("delete", table.__table__), {"ids": rerun})
        results: dict[str, list[dict[str, Any]]] = defaultdict(list)
        job_rows, image_rows, events = [], [], []
        now = utcnow()
        for w in mine:
            job = jobs[w.job_id]
            timings = {k: round(v, 6) for k, v in w.timings.items()}
            image_row: dict[str, Any] = {"_id": job.image_id, "sha256": _sha256(w.data) if w.data else job.sha256}
            image_payload = {"id": job.image_id, "bucket": job.bucket, "key": job.key, "etag": job.etag,
                             "source": job.source, "width": None, "height": None,
                             "sha256": image_row["sha256"], "captured_at": None,
                             "uploaded_at": _iso(job.uploaded_at)}
            job_row: dict[str, Any] = {"_id": job.id, "lease_owner": None, "lease_expires_at": None,
                                       "finished_at": now, "timings": timings}
            if w.failure is not None:
                log.warning("job %s failed: %s", w.job_id, w.failure)
                job_row.update(status=JobStatus.failed.value, error=w.failure, lineage=None)
                events.append(event_row("job.failed", job.id, {
                    "version": PAYLOAD_VERSION, "image": image_payload,
                    "job": {"id": job.id, "profile": job.profile, "attempts": job.attempts, "error": w.failure}}))
                outcomes.append(Outcome(w.job_id, "failed", w.failure))
            else:
                captured = _captured_at(w.decoded.image)
                image_row.update(width=w.decoded.width, height=w.decoded.height, captured_at=captured)
                image_payload.update(width=w.decoded.width, height=w.decoded.height, captured_at=_iso(captured))
                payload_results: dict[str, list] = {kind: [] for kind in RESULT_TABLES}
                for result in w.results:
                    kind, found = _rows(result, job.id, job.image_id)
                    results[kind].extend(found)
                    payload_results[kind].extend(
                        {k: v for k, v in r.items() if k not in ("job_id", "image_id")} for r in found)
                lineage = [r.lineage.as_dict() for r in w.results]
                job_row.update(status=JobStatus.succeeded.value, error=None, lineage=lineage)
                events.append(event_row("job.succeeded", job.id, {
                    "version": PAYLOAD_VERSION, "image": image_payload, "results": payload_results,
                    "job": {"id": job.id, "profile": job.profile, "attempts": job.attempts, "timings": timings,
                            "lineage": lineage, "notes": list(getattr(w.decoded, "notes", []))}}))
                outcomes.append(Outcome(w.job_id, "succeeded"))
            job_rows.append(job_row)
            image_rows.append(image_row)
        for kind, found in results.items():
            if found:
                conn.execute(_statement("insert", RESULT_TABLES[kind].__table__), found)
        for table, table_rows in ((Image.__table__, image_rows), (Job.__table__, job_rows)):
            for group in _by_keys(table_rows):  # by primary key: an executemany per column set
                conn.execute(_statement("update", table, tuple(k for k in group[0] if k != "_id")), group)
        conn.execute(_statement("insert", OutboxEvent.__table__), events)
    by_status: dict[str, list[int]] = defaultdict(list)
    for o in outcomes:
        by_status[o.status].append(o.job_id)
    for status, job_ids in by_status.items():
        log.info("jobs %s %s", job_ids, status)
    return outcomes


@functools.lru_cache(maxsize=1)
def _commit_select() -> Any:
    """The jobs (``ids``) locked, each with its image's columns and its source's name; built once."""
    j, im, src = Job.__table__, Image.__table__, Source.__table__
    return (select(j.c.id, j.c.status, j.c.lease_owner, j.c.profile, j.c.attempts, im.c.id.label("image_id"),
                   im.c.bucket, im.c.key, im.c.etag, im.c.sha256, im.c.uploaded_at, src.c.name.label("source"))
            .join(im, im.c.id == j.c.image_id).outerjoin(src, src.c.id == im.c.source_id)
            .where(j.c.id.in_(bindparam("ids", expanding=True))).with_for_update(of=j))


@functools.lru_cache(maxsize=64)
def _statement(kind: str, table: Any, columns: tuple[str, ...] = ()) -> Any:
    """Built once per (kind, table, columns): ``insert``; ``delete`` by ``job_id`` in ``ids``; ``update`` of
    ``columns`` by ``_id`` (an executemany)."""
    if kind == "insert":
        return insert(table)
    if kind == "delete":
        return delete(table).where(table.c.job_id.in_(bindparam("ids", expanding=True)))
    return update(table).where(table.c.id == bindparam("_id")).values({k: bindparam(k) for k in columns})


def _by_keys(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(sorted(r))].append(r)
    return list(groups.values())
