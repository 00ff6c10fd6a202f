"""The job lease: which worker runs a job, for how long, and what happens when it stops renewing.

A worker *claims* jobs (status ``running``, ``lease_owner`` = its process's id, ``lease_expires_at`` ahead), a
``Heartbeat`` thread *renews* the lease while it works (an analyzer call of any length included), and the worker
either commits the job's outcome (``workers.commit``) or *releases* it (back to ``queued``). The *reconciler*
reclaims jobs whose lease expired (their worker died) and re-sends jobs whose task message was lost. Recovery
never depends on the broker: the database lease is the source of truth.

Attempts count only what can be the image's fault: a claim counts one, a release after a transient fault (object
storage or database unreachable) gives it back. A job claimed before (its worker was lost, or its batch failed
as a whole) runs alone, so an image that kills or breaks a batch cannot take other jobs down with it again.
While a job is not finished, ``jobs.error`` notes what ended its last attempt.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from sqlalchemy import or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from services.db import session_scope
from services.ingest.register import SendJob, send_stamped
from services.loop import keep_running
from services.schema import Image, Job, JobStatus, utcnow

if TYPE_CHECKING:
    from services.settings import Settings

log = logging.getLogger(__name__)

QUEUED, RUNNING = JobStatus.queued.value, JobStatus.running.value
LOST_NOTE = ("its worker process stopped while running it and its lease expired (the process was killed, ran out "
             "of memory or crashed, or passed the hard time limit)")


@dataclass(frozen=True)
class Claimed:
    """A leased job with what the pipeline needs to run it."""

    job_id: int
    image_id: int
    key: str
    profile: str
    attempts: int  # claims so far, this one included, less those given back after transient faults
    queue: str
    note: Optional[str] = None  # what ended the last attempt, when there was one


def claim(db_url: str, owner: str, lease_seconds: float, job_ids: Sequence[int], extra: int = 0) -> list[Claimed]:
    """Lease the fresh (never claimed) queued jobs of ``job_ids``, topped up with up to ``extra`` other fresh
    queued jobs of their queue, oldest first, so a worker runs batches. When none of ``job_ids`` is fresh, the
    first of them that is queued is leased alone. Returns the claimed jobs by id; none when every job is
    finished already or held by another worker."""
    now = utcnow()
    queued = Job.id.in_(list(job_ids)) & (Job.status == QUEUED)
    with session_scope(db_url) as s:
        named = s.execute(select(Job.id, Job.attempts).where(queued).order_by(Job.id)).all()
        fresh = [r.id for r in named if r.attempts == 0]
        if fresh:
            claimed = _take(s, owner, now, lease_seconds, queued & Job.id.in_(fresh) & (Job.attempts == 0))
            if claimed and extra > 0:
                others = (select(Job.id).where(Job.status == QUEUED, Job.attempts == 0, Job.queue == claimed[0].queue)
                          .order_by(Job.id).limit(extra))
                if s.get_bind().dialect.name == "postgresql":  # concurrent workers each take different jobs
                    others = others.with_for_update(skip_locked=True)
                claimed += _take(s, owner, now, lease_seconds,
                                 Job.id.in_(others.scalar_subquery()) & (Job.status == QUEUED))
            return sorted(claimed, key=lambda c: c.job_id)
        for r in named:  # each was claimed before: one at a time
            claimed = _take(s, owner, now, lease_seconds, queued & (Job.id == r.id))
            if claimed:
                return claimed
    return []


def claim_queued(db_url: str, owner: str, lease_seconds: float, queues: Sequence[str], limit: int) -> list[Claimed]:
    """Lease up to ``limit`` fresh (never claimed) queued jobs of ``queues``, oldest first: the GPU worker's
    top-up while it is busy (``claim``'s top-up, without a task naming jobs)."""
    if limit <= 0 or not queues:
        return []
    with session_scope(db_url) as s:
        queued = (select(Job.id).where(Job.status == JobStatus.queued.value, Job.queue.in_(list(queues)),
                                       Job.attempts == 0)  # a job claimed before runs alone (``claim``)
                  .order_by(Job.id).limit(limit))
        if s.get_bind().dialect.name == "postgresql":  # concurrent workers each take different jobs
            queued = queued.with_for_update(skip_locked=True)
        claimed = _take(s, owner, utcnow(), lease_seconds,
                        Job.id.in_(queued.scalar_subquery()) & (Job.status == JobStatus.queued.value))
    return sorted(claimed, key=lambda c: c.job_id)


def _take(s: Session, owner: str, now: datetime, lease_seconds: float, where: object) -> list[Claimed]:
    """Lease the jobs ``where`` selects in one UPDATE ... RETURNING, then read their object keys."""
    rows = s.execute(update(Job).where(where).values(
        status=RUNNING, lease_owner=owner, started_at=now,
        lease_expires_at=now + timedelta(seconds=lease_seconds), attempts=Job.attempts + 1,
    ).returning(Job.id, Job.image_id, Job.profile, Job.attempts, Job.queue, Job.error)).all()
    if not rows:
        return []
    keys = dict(s.execute(select(Image.id, Image.key).where(Image.id.in_([r.image_id for r in rows]))).all())
    return [Claimed(r.id, r.image_id, keys[r.image_id], r.profile, r.attempts, r.queue, r.error) for r in rows]


def renew(db_url: str, owner: str, lease_seconds: float, job_ids: Sequence[int]) -> set[int]:
    """Move the lease of those of ``job_ids`` still held by ``owner`` ahead; returns the ids renewed."""
    with session_scope(db_url) as s:
        return set(s.execute(update(Job).where(Job.id.in_(list(job_ids)), Job.lease_owner == owner,
                                                Job.status == RUNNING)
                             .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
                             .returning(Job.id)).scalars())


class Heartbeat:
    """Renews the leases of ``job_ids`` every quarter lease from a thread for as long as the ``with`` block runs,
    so a worker that is alive keeps its jobs however long one analyzer call takes. A renewal that fails (the
    database is unreachable) is logged and tried again at the next beat."""

    def __init__(self, db_url: str, owner: str, lease_seconds: float, job_ids: Sequence[int]) -> None:
        self.db_url, self.owner, self.lease_seconds, self.job_ids = db_url, owner, lease_seconds, list(job_ids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vlwatch-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_seconds / 4):
            try:
                renew(self.db_url, self.owner, self.lease_seconds, self.job_ids)
            except Exception as exc:  # noqa: BLE001 - the next beat tries again; the lease outlives a few misses
                log.warning("jobs %s: lease renewal failed (%s: %s)", self.job_ids, type(exc).__name__, exc)


def release(db_url: str, owner: str, job_ids: Sequence[int], *, refund: bool, note: Optional[str] = None,
            resent: bool = False) -> bool:
    """Give the jobs of ``job_ids`` still leased to ``owner`` back (queued, no owner). ``refund``: the attempt
    their claim counted is given back (a transient fault, not the image's). ``note`` records why.
    ``resent``: their task is being sent again now (else the reconciler sends it at its next pass). Returns
    False when the database is unreachable: the caller gives the attempts back later (``give_back``)."""
    values: dict = {"status": QUEUED, "lease_owner": None, "lease_expires_at": None,
                    "sent_at": utcnow() if resent else None}
    if refund:
        values["attempts"] = Job.attempts - 1
    if note is not None:
        values["error"] = note
    try:
        with session_scope(db_url) as s:
            s.execute(update(Job).where(Job.id.in_(list(job_ids)), Job.lease_owner == owner, Job.status == RUNNING)
                      .values(**values))
    except OperationalError:
        log.warning("jobs %s: could not release the claims (database unreachable); later", list(job_ids))
        return False
    return True


def give_back(db_url: str, owner: str, job_ids: Sequence[int]) -> bool:
    """After the database itself was unreachable: release the jobs of ``job_ids`` still leased to ``owner`` with
    their attempt given back, and give the attempt back to those the reconciler reclaimed meanwhile (their
    lease expired during the outage: the fault was the outage's, not the image's). False while the database
    is still unreachable."""
    ids = list(job_ids)
    if not release(db_url, owner, ids, refund=True):
        return False
    with session_scope(db_url) as s:
        s.execute(update(Job).where(Job.id.in_(ids), Job.status == QUEUED, Job.lease_owner.is_(None),
                                    Job.attempts > 0, Job.error == LOST_NOTE)
                  .values(attempts=Job.attempts - 1, error=None))
    return True


def reconcile(db_url: str, send_job: SendJob, requeue_after: float, limit: int = 500) -> dict[str, int]:
    """Reclaim jobs whose lease expired (back to queued, noting why) and send again the queued jobs never sent or
    sent more than ``requeue_after`` seconds ago: jobs claimed before one per task (they run alone), fresh ones
    ``TASK_JOBS`` to a task. Several reconcilers may run at once (one per worker): each job due is stamped
    before it is sent, by one of them only. Returns ``{"reclaimed": n, "resent": m}``."""
    now = utcnow()
    with session_scope(db_url) as s:
        expired = s.execute(
            update(Job).where(Job.status == RUNNING, Job.lease_expires_at < now)
            .values(status=QUEUED, lease_owner=None, lease_expires_at=None, sent_at=None, error=LOST_NOTE)
            .returning(Job.id)).scalars().all()
    if expired:
        log.warning("reclaimed %d job(s) whose lease expired: %s", len(expired), expired)
    cutoff = now - timedelta(seconds=requeue_after)
    resent = 0
    while True:
        with session_scope(db_url) as s:
            due = (select(Job.id).where(Job.status == QUEUED, or_(Job.sent_at.is_(None), Job.sent_at < cutoff))
                   .order_by(Job.id).limit(limit))
            if s.get_bind().dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True)
            rows = s.execute(update(Job).where(Job.id.in_(due.scalar_subquery())).values(sent_at=now)
                             .returning(Job.id, Job.queue, Job.attempts)).all()
        sent = send_stamped(db_url, rows, send_job)
        resent += sent
        if len(rows) < limit or sent < len(rows):  # the last page, or the broker is down: the next pass goes on
            return {"reclaimed": len(expired), "resent": resent}


def reconcile_forever(settings: "Settings", send_job: SendJob, stop: Optional[threading.Event] = None,
                      on_result: Optional[Callable[[dict[str, int]], None]] = None,
                      interval: Optional[float] = None) -> None:
    """``reconcile`` every ``interval`` seconds (default ``settings.reconcile_every``) until ``stop`` is set,
    riding out outages of the database and the broker (``services.loop.keep_running``): the loop every worker
    runs in a thread, ``vlwatch dispatch`` beside its lanes and ``vlwatch reconcile --watch`` alone."""
    keep_running(lambda: reconcile(settings.db_url, send_job, requeue_after=settings.requeue_after),
                 interval=interval or settings.reconcile_every, name="reconciler", stop=stop, on_result=on_result)
