"""Registration: every path in (upload, scan, bucket events) converges on one idempotent registration.

One transaction writes the image row and its job row (status ``queued``, stamped ``sent_at``), keyed by (bucket,
key, etag); only after commit is the Celery task sent, carrying the job id. A send that fails clears the stamp
again: the reconciler's next pass re-sends the job (``send_stamped``, the reconciler's own way of sending).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence

from sqlalchemy import insert, select, tuple_, update
from sqlalchemy.orm import Session

from services import metrics
from services.config import AppConfig
from services.db import insert_ignore, session_scope
from services.schema import Image, Job, Source, utcnow

log = logging.getLogger(__name__)

SendJob = Callable[[list[int], str], None]  # (job_ids, queue) -> sends one analyze task for those jobs
TASK_JOBS = 16  # job ids per task message


class ObjectLike(Protocol):
    key: str
    etag: str
    size: int
    last_modified: Optional[datetime]
    content_type: Optional[str]


@dataclass(frozen=True)
class Registered:
    image_id: int
    job_id: Optional[int]  # None when the object was already registered
    key: str
    queue: Optional[str] = None  # the new job's queue

    @property
    def created(self) -> bool:
        return self.job_id is not None


def ensure_sources(session: Session, config: AppConfig) -> dict[str, int]:
    """Create or update a row per configured source; returns name -> id."""
    now = utcnow()
    for name, src in config.sources.items():
        insert_ignore(session, Source, [{"name": name, "profile": src.profile, "prefix": src.prefix,
                                         "created_at": now}], keys=["name"])
        session.execute(update(Source).where(Source.name == name).values(profile=src.profile, prefix=src.prefix))
    return dict(session.execute(select(Source.name, Source.id)).all())


def register_objects(
    session: Session, config: AppConfig, bucket: str, objects: Sequence[ObjectLike], source: Optional[str] = None,
    source_ids: Optional[dict[str, int]] = None,
) -> list[Registered]:
    """Idempotently register objects in the caller's transaction (a few statements per batch, not per object).
    ``source`` overrides prefix matching. The same (key, etag) twice in one batch registers once. ``source_ids``:
    what ``ensure_sources`` returned for this config in an earlier transaction (one upload's batches share it)."""
    if not objects:
        return []
    if source is not None:
        config = config.with_source(source)
    if source_ids is None:
        source_ids = ensure_sources(session, config)
    conn = session.connection()  # Core statements in the session's transaction: no ORM bulk machinery per row
    now = utcnow()
    unique: dict[tuple[str, str], ObjectLike] = {}
    for obj in objects:
        unique.setdefault((obj.key, obj.etag), obj)
    sources = {k: source or config.source_for_key(k[0]) for k in unique}
    rows = [{"source_id": source_ids.get(sources[k]) if sources[k] else None, "bucket": bucket, "key": o.key,
             "etag": o.etag, "size": o.size, "content_type": o.content_type, "uploaded_at": o.last_modified,
             "registered_at": now} for k, o in unique.items()]
    images, jobs_table = Image.__table__, Job.__table__
    created = {(key, etag): image_id for image_id, key, etag in insert_ignore(
        conn, images, rows, keys=["bucket", "key", "etag"], returning=(images.c.id, images.c.key, images.c.etag))}
    existing = _registered(conn, bucket, [k for k in unique if k not in created])
    jobs: dict[int, tuple[int, str]] = {}  # image id -> (job id, queue)
    if created:
        job_rows = []
        for k, image_id in created.items():
            profile_name = config.profile_name(sources[k])
            job_rows.append({"image_id": image_id, "profile": profile_name, "status": "queued", "attempts": 0,
                             "queue": config.profiles[profile_name].queue_name, "queued_at": now, "sent_at": now})
        inserted = conn.execute(insert(jobs_table).returning(jobs_table.c.id, jobs_table.c.image_id,
                                                             jobs_table.c.queue), job_rows)
        jobs = {image_id: (job_id, queue) for job_id, image_id, queue in inserted}
    out: list[Registered] = []
    for obj in objects:
        k = (obj.key, obj.etag)
        if k in created and created[k] in jobs:
            job_id, queue = jobs.pop(created[k])
            out.append(Registered(created[k], job_id, obj.key, queue))
        else:  # already registered (earlier, or earlier in this batch): one image, one job
            out.append(Registered(created.get(k) or existing[k], None, obj.key))
    return out


def known_etags(session: Session, bucket: str, keys: Iterable[str]) -> set[tuple[str, str]]:
    """(key, etag) of every image registered in ``bucket`` under one of ``keys`` (500 keys a statement): an
    object whose (key, etag) is in it needs no registration."""
    images, keys = Image.__table__, list(dict.fromkeys(keys))
    known: set[tuple[str, str]] = set()
    for i in range(0, len(keys), 500):
        known.update((key, etag) for key, etag in session.execute(select(images.c.key, images.c.etag).where(
            images.c.bucket == bucket, images.c.key.in_(keys[i : i + 500]))))
    return known


def _registered(conn: Any, bucket: str, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """(key, etag) -> image id of those of ``pairs`` registered in ``bucket`` (500 pairs a statement)."""
    images = Image.__table__
    found: dict[tuple[str, str], int] = {}
    for i in range(0, len(pairs), 500):
        found.update({(key, etag): image_id for image_id, key, etag in conn.execute(
            select(images.c.id, images.c.key, images.c.etag).where(
                images.c.bucket == bucket, tuple_(images.c.key, images.c.etag).in_(pairs[i : i + 500])))})
    return found


def send_registered(db_url: str, registered: Iterable[Registered], send_job: SendJob) -> int:
    """After commit: send the new jobs, which their registration stamped sent (``send_stamped``)."""
    new = [r for r in registered if r.job_id is not None]
    if not new:
        return 0
    queues = {r.job_id: r.queue for r in new if r.queue is not None}
    if len(queues) < len(new):
        with session_scope(db_url) as s:
            queues = dict(s.execute(select(Job.id, Job.queue).where(Job.id.in_([r.job_id for r in new]))).all())
    return send_stamped(db_url, [(r.job_id, queues[r.job_id], 0) for r in new], send_job)


def send_stamped(db_url: str, jobs: Sequence[tuple[int, str, int]], send_job: SendJob) -> int:
    """Send (job id, queue, attempts) whose ``sent_at`` the committed transaction that queued them stamped: jobs
    claimed before one per task (they run alone), fresh ones ``TASK_JOBS`` to a task of their queue. A send that
    fails (broker down) clears its jobs' stamp again, so the reconciler's next pass sends them; jobs whose sender
    died before sending keep the stamp and are sent again once it is older than VLWATCH_REQUEUE_AFTER_SECONDS.
    Returns how many jobs were sent."""
    tasks: list[tuple[list[int], str]] = [([job_id], queue) for job_id, queue, attempts in jobs if attempts > 0]
    fresh: dict[str, list[int]] = {}
    for job_id, queue, attempts in jobs:
        if attempts == 0:
            fresh.setdefault(queue, []).append(job_id)
    tasks += [(ids[i : i + TASK_JOBS], q) for q, ids in fresh.items() for i in range(0, len(ids), TASK_JOBS)]
    failed: list[int] = []
    for ids, queue in tasks:
        try:
            send_job(ids, queue)
        except Exception as exc:  # noqa: BLE001 - broker down: the reconciler's next pass sends them
            log.warning("could not send jobs %s (%s); the reconciler will send them", ids, exc)
            failed += ids
    if failed:
        with session_scope(db_url) as s:
            s.execute(update(Job).where(Job.id.in_(failed)).values(sent_at=None))
    return sum(len(ids) for ids, _ in tasks) - len(failed)


def register_and_send(
    db_url: str, config: AppConfig, bucket: str, objects: Sequence[ObjectLike], send_job: SendJob,
    source: Optional[str] = None, source_ids: Optional[dict[str, int]] = None,
) -> list[Registered]:
    with session_scope(db_url) as s:
        registered = register_objects(s, config, bucket, objects, source, source_ids)
    metrics.IMAGES_REGISTERED.inc(sum(r.created for r in registered))
    send_registered(db_url, registered, send_job)
    return registered
