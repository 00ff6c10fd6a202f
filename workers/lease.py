"""The job lease: which worker runs a job, for how long, and what happens when it stops renewing.

A worker *claims* jobs (status ``running``, ``lease_owner`` = its id, ``lease_expires_at`` ahead), *renews* the
lease while it works, and either commits the job's outcome (``workers.commit``) or *releases* it (back to
``queued``) on a transient fault. The *reconciler* reclaims jobs whose lease expired (their worker died) and
re-sends jobs that sat queued too long (their task message was lost). Recovery never depends on the broker: the
database lease is the source of truth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Sequence

from sqlalchemy import or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from services.db import session_scope
from services.ingest.register import SendJob, send_in_chunks
from services.schema import Image, Job, JobStatus, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claimed:
    """A leased job with what the pipeline needs to run it."""

    job_id: int
    image_id: int
    key: str
    profile: str
    attempts: int  # claims so far, this one included
    queue: str


def claim(db_url: str, owner: str, lease_seconds: float, job_ids: Sequence[int], extra: int = 0) -> list[Claimed]:
    """Lease those of ``job_ids`` that are queued (or running with an expired lease), plus up to ``extra`` other
    queued jobs of the same queue, oldest first, so a worker runs batches. Returns the claimed jobs by id; none
    when every job was finished already or is held by a live lease."""
    now = utcnow()
    with session_scope(db_url) as s:
        claimed = _take(s, owner, now, lease_seconds, Job.id.in_(list(job_ids)) & or_(
            Job.status == JobStatus.queued.value,
            (Job.status == JobStatus.running.value) & (Job.lease_expires_at < now)))
        if claimed and extra > 0:
            others = (select(Job.id).where(Job.status == JobStatus.queued.value, Job.queue == claimed[0].queue)
                      .order_by(Job.id).limit(extra))
            if s.get_bind().dialect.name == "postgresql":  # concurrent workers each take different jobs
                others = others.with_for_update(skip_locked=True)
            claimed += _take(s, owner, now, lease_seconds,
                             Job.id.in_(others.scalar_subquery()) & (Job.status == JobStatus.queued.value))
    return sorted(claimed, key=lambda c: c.job_id)


def claim_queued(db_url: str, owner: str, lease_seconds: float, queues: Sequence[str], limit: int) -> list[Claimed]:
    """Lease up to ``limit`` queued jobs of ``queues``, oldest first: the GPU worker's top-up while it is busy
    (``claim``'s top-up, without a task naming jobs)."""
    if limit <= 0 or not queues:
        return []
    with session_scope(db_url) as s:
        queued = (select(Job.id).where(Job.status == JobStatus.queued.value, Job.queue.in_(list(queues)))
                  .order_by(Job.id).limit(limit))
        if s.get_bind().dialect.name == "postgresql":  # concurrent workers each take different jobs
            queued = queued.with_for_update(skip_locked=True)
        claimed = _take(s, owner, utcnow(), lease_seconds,
                        Job.id.in_(queued.scalar_subquery()) & (Job.status == JobStatus.queued.value))
    return sorted(claimed, key=lambda c: c.job_id)


def _take(s: Session, owner: str, now: datetime, lease_seconds: float, where: object) -> list[Claimed]:
    """Lease the jobs ``where`` selects in one UPDATE ... RETURNING, then read their object keys."""
    rows = s.execute(update(Job).where(where).values(
        status=JobStatus.running.value, lease_owner=owner, started_at=now,
        lease_expires_at=now + timedelta(seconds=lease_seconds), attempts=Job.attempts + 1,
    ).returning(Job.id, Job.image_id, Job.profile, Job.attempts, Job.queue)).all()
    if not rows:
        return []
    keys = dict(s.execute(select(Image.id, Image.key).where(Image.id.in_([r.image_id for r in rows]))).all())
    return [Claimed(r.id, r.image_id, keys[r.image_id], r.profile, r.attempts, r.queue) for r in rows]


def renew(db_url: str, owner: str, lease_seconds: float, job_ids: Sequence[int]) -> None:
    """Move the lease of those of ``job_ids`` still held by ``owner`` ahead."""
    with session_scope(db_url) as s:
        s.execute(update(Job).where(Job.id.in_(list(job_ids)), Job.lease_owner == owner).values(
            lease_expires_at=utcnow() + timedelta(seconds=lease_seconds)))


def release(db_url: str, owner: str, job_ids: Sequence[int]) -> None:
    """Give jobs back (queued, no owner) after a transient fault, so the retry or another worker runs them.
    When the database itself is unreachable the leases simply expire and the reconciler reclaims them."""
    try:
        with session_scope(db_url) as s:
            s.execute(update(Job).where(Job.id.in_(list(job_ids)), Job.lease_owner == owner,
                                        Job.status == JobStatus.running.value)
                      .values(status=JobStatus.queued.value, lease_owner=None, lease_expires_at=None))
    except OperationalError:
        log.warning("jobs %s: could not release the claims; their leases will expire", list(job_ids))


def reconcile(db_url: str, send_job: SendJob, requeue_after: float, limit: int = 500) -> dict[str, int]:
    """Reclaim jobs whose lease expired (back to queued, to be sent again) and re-send queued jobs never sent or
    sent more than ``requeue_after`` seconds ago. Returns ``{"reclaimed": n, "resent": m}``."""
    now = utcnow()
    with session_scope(db_url) as s:
        expired = s.execute(
            update(Job).where(Job.status == JobStatus.running.value, Job.lease_expires_at < now)
            .values(status=JobStatus.queued.value, lease_owner=None, lease_expires_at=None, sent_at=None)
            .returning(Job.id)).scalars().all()
    if expired:
        log.warning("reclaimed %d job(s) whose lease expired: %s", len(expired), expired)
    cutoff = now - timedelta(seconds=requeue_after)
    with session_scope(db_url) as s:
        due = s.execute(select(Job.id, Job.queue).where(
            Job.status == JobStatus.queued.value, or_(Job.sent_at.is_(None), Job.sent_at < cutoff),
        ).order_by(Job.id).limit(limit)).all()
    resent = send_in_chunks(db_url, [(job_id, queue) for job_id, queue in due], send_job)
    return {"reclaimed": len(expired), "resent": resent}
