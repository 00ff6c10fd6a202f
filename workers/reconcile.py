"""The reconciler: re-sends jobs left queued and reclaims jobs whose lease expired (a worker died mid-job).

Recovery does not depend on the broker: the database lease is the source of truth. Run it periodically
(``vlwatch reconcile --watch``; ``vlwatch dispatch --watch`` runs it on every tick as well).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Callable

from sqlalchemy import or_, select, update

from services.db import session_scope
from services.ingest import send_in_chunks
from services.schema import Job, JobStatus, utcnow

log = logging.getLogger(__name__)


def reconcile(db_url: str, send_job: Callable[[list[int], str], None], requeue_after: float,
              limit: int = 500) -> dict:
    now = utcnow()
    with session_scope(db_url) as s:
        expired = s.execute(
            update(Job)
            .where(Job.status == JobStatus.running.value, Job.lease_expires_at < now)
            .values(status=JobStatus.queued.value, lease_owner=None, lease_expires_at=None, sent_at=None)
            .returning(Job.id)
        ).scalars().all()
    if expired:
        log.warning("reclaimed %d job(s) whose lease expired: %s", len(expired), expired)
    cutoff = now - timedelta(seconds=requeue_after)
    with session_scope(db_url) as s:
        due = s.execute(
            select(Job.id, Job.queue)
            .where(Job.status == JobStatus.queued.value, or_(Job.sent_at.is_(None), Job.sent_at < cutoff))
            .order_by(Job.id).limit(limit)
        ).all()
    resent = send_in_chunks(db_url, list(due), send_job)
    return {"reclaimed": len(expired), "resent": resent}
