"""The GPU worker: VL2 jobs through the continuous-batching scheduler (``model.vl2.scheduler``, docs/gpu.md).

One ``Feeder`` per worker process holds the scheduler (one model instance per process) and every job it has
claimed, from the claim to the commit. Its threads each do one thing:
- task threads (Celery's; one with ``--pool solo``): ``serve`` claims the task's jobs (topped up with other queued
  jobs, as the batch path does), hands them over and waits until each is committed; so a task message is
  acknowledged after its jobs are done (``acks_late``), and with prefetch 1 the next message waits meanwhile;
- preparation threads: a job's stages up to the GPU (``workers.gpu_jobs.prepare``), then its requests to the
  scheduler;
- the GPU thread: steps the scheduler while it holds prompts and hands each finished request on;
- the ledger thread: the feeder's database writes, in order: commits (each job as soon as its own requests are
  back, jobs finished together in one transaction), lease renewals of every job held (each quarter lease, so jobs
  waiting in the scheduler keep their leases), and top-up claims while fewer than twice the scheduler's batch of
  prompts are outstanding (the running batch and one batch waiting), so the GPU never idles while jobs wait.

A job whose preparation meets a transient fault (storage or database unreachable) is released; the task that
named it raises ``TransientError`` and Celery retries it with backoff, as on the batch path.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Sequence

from sqlalchemy.exc import OperationalError

from services.config import GPU_ANALYZERS
from services.storage import StorageUnavailable
from workers.commit import commit
from workers.gpu_jobs import GpuJob, build_scheduler, expected_prompts, finish, prepare
from workers.lease import Claimed, claim, claim_queued, release, renew
from workers.pipeline import TransientError, count_finished
from workers.runtime import Runtime
from workers.work import Outcome, Work

log = logging.getLogger(__name__)

TRANSIENT = (StorageUnavailable, OperationalError)
PREP_THREADS = 8  # fetch + decode + tiling of a 12 MP JPEG is ~0.1-0.3 s of one core: 8 feed tens of images/s
SHUTDOWN_WAIT = 60.0  # seconds a stopping worker gives the jobs it holds to finish before releasing them
# After a top-up that found nothing, the next waits this long: a claim is a database round trip on the ledger
# thread, and a ledger that keeps asking holds the GIL the GPU thread needs between its kernel launches.
EMPTY_QUEUE_WAIT = 1.0


def scheduled(rt: Runtime, queue: Optional[str]) -> bool:
    """Whether jobs of ``queue`` go through the scheduler: ``VLWATCH_VL2_SCHEDULER`` is on and every profile of that
    queue runs a VL2 analyzer (the ``gpu`` queue by default). A queue that also carries profiles without one keeps
    the batch path, where CPU analyzers see batches."""
    profiles = [p for p in rt.config.profiles.values() if p.queue_name == queue]
    return rt.settings.vl2_scheduler and bool(profiles) and all(
        any(a in GPU_ANALYZERS for a in p.analyzers) for p in profiles)


def serve(rt: Runtime, job_ids: Sequence[int]) -> list[Outcome]:
    """The task's jobs through this process's feeder; returns when each is committed (or skipped: finished
    already, or held by another worker). Raises ``TransientError`` when one was released for a transient fault."""
    try:
        outcomes = feeder(rt).serve(job_ids)
    except TRANSIENT as exc:
        raise TransientError(f"jobs {list(job_ids)}: {exc}") from exc
    released = [o for o in outcomes if o.status == "released"]
    if released:
        raise TransientError(f"jobs {[o.job_id for o in released]} released: {released[0].reason}")
    return outcomes


class Feeder:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._lock = threading.Condition()  # guards what follows; notified when the GPU thread has work
        self._held: dict[int, GpuJob] = {}
        self._queues: set[str] = set()  # the queues top-ups claim from: those of the jobs claimed so far
        self._schedulers: dict[int, Any] = {}  # id(model) -> its Scheduler
        self._to_commit: list[GpuJob] = []
        self._claiming = False  # a top-up is on the ledger
        self._top_up_after = 0.0  # monotonic time before which no top-up is tried
        self._renewed_at = time.monotonic()
        self._claims_stopped = False
        self._prep = ThreadPoolExecutor(PREP_THREADS, thread_name_prefix="vlwatch-prep")
        self._ledger = ThreadPoolExecutor(1, thread_name_prefix="vlwatch-ledger")
        threading.Thread(target=self._run, name="vlwatch-gpu", daemon=True).start()

    # ---- the task's side -------------------------------------------------------------------------------------
    def serve(self, job_ids: Sequence[int]) -> list[Outcome]:
        s = self.rt.settings
        extra = max(0, s.batch_size - len(job_ids)) if self._wants_more() else 0
        claimed = claim(self.rt.db_url, self.rt.worker_id, s.lease_seconds, job_ids, extra=extra)
        fresh = {j.job_id: j for j in self._hold(claimed)}
        with self._lock:
            jobs = {j: fresh.get(j) or self._held.get(j) for j in job_ids}
        outcomes = []
        for job_id, job in jobs.items():
            if job is None:
                outcomes.append(Outcome(job_id, "skipped"))
                continue
            job.done.wait()
            outcomes.append(job.outcome or Outcome(job_id, "released", "the worker stopped"))
        return outcomes

    def stop_claiming(self) -> None:
        with self._lock:
            self._claims_stopped = True

    def close(self, wait: float = SHUTDOWN_WAIT) -> None:
        """No more top-ups; give the jobs held ``wait`` seconds to finish, then release the rest (the reconciler
        sends them again)."""
        self.stop_claiming()
        deadline = time.monotonic() + wait
        with self._lock:
            while self._held and time.monotonic() < deadline:
                self._lock.wait(0.2)
            left = list(self._held.values())
        if left:
            log.warning("stopping: releasing jobs %s", [j.job_id for j in left])
            self._ledger.submit(self._release, left, "the worker stopped").result()

    # ---- claims and preparation ------------------------------------------------------------------------------
    def _hold(self, claimed: list[Claimed]) -> list[GpuJob]:
        """Hold the jobs claimed and start preparing them. A job held already (claimed again after its lease
        expired, a renewal having come too late) goes on as it was."""
        new, jobs = [], []
        with self._lock:
            for c in claimed:
                job = self._held.get(c.job_id)
                if job is None:
                    job = self._held[c.job_id] = GpuJob(Work.of(c), expected_prompts(self.rt, c.profile))
                    self._queues.add(c.queue)
                    new.append(job)
                jobs.append(job)
        for job in new:
            self._prep.submit(self._prepare, job)
        return jobs

    def _prepare(self, job: GpuJob) -> None:
        try:
            prepare(self.rt, job, exact=self.rt.settings.vl2_exact_pixels)
        except TRANSIENT as exc:
            self._ledger.submit(self._release, [job], f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - whatever breaks one job's preparation fails that job only
            log.exception("job %s: preparation failed", job.job_id)
            job.work.fail("internal", f"preparing {job.work.key!r} failed: {type(exc).__name__}: {exc}")
        job.prepared = True
        if job.work.failure is not None or job.prompts is None or not job.prompts.requests:
            self._answered(job)
            return
        job.scheduler = self._scheduler(job.model)
        job.submitted_at = time.perf_counter()
        for request in job.prompts.requests:
            job.scheduler.submit(request)
        with self._lock:
            self._lock.notify_all()

    def _scheduler(self, model: Any) -> Any:
        with self._lock:
            if id(model) not in self._schedulers:
                self._schedulers[id(model)] = build_scheduler(model, self.rt.settings)
            return self._schedulers[id(model)]

    # ---- the GPU thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._keep_books()
            with self._lock:
                busy = [s for s in self._schedulers.values() if not s.idle]
                if not busy:
                    self._lock.wait(min(self.rt.settings.lease_seconds / 8, 1.0))  # a submit or a claim wakes it
                    continue
            for sched in busy:
                try:
                    finished = sched.step()
                except Exception as exc:  # noqa: BLE001 - the scheduler's state is lost: its jobs run again
                    self._scheduler_failed(sched, exc)
                    continue
                for res in finished:
                    self._returned(res)

    def _returned(self, res: Any) -> None:
        """A request is back (``RequestResult``, keyed ``(job id, part)``); the job is done when all of its are."""
        with self._lock:
            job = self._held.get(res.key[0])
        if job is not None:
            job.answers[res.key] = res
            if job.answered:
                self._answered(job)

    def _scheduler_failed(self, sched: Any, exc: Exception) -> None:
        log.error("the GPU scheduler failed (%s: %s); its jobs are released to run again", type(exc).__name__, exc,
                  exc_info=exc)
        with self._lock:
            self._schedulers = {k: s for k, s in self._schedulers.items() if s is not sched}
            lost = [j for j in self._held.values() if j.scheduler is sched and not j.answered]
        self._ledger.submit(self._release, lost, f"the GPU scheduler failed: {type(exc).__name__}: {exc}",
                            False)

    def _keep_books(self) -> None:
        """Hand renewals and top-ups to the ledger when due."""
        now = time.monotonic()
        with self._lock:
            held = list(self._held)
            renew_due = bool(held) and now - self._renewed_at >= self.rt.settings.lease_seconds / 4
            if renew_due:
                self._renewed_at = now
            top_up = bool(held) and not self._claiming and now >= self._top_up_after and self._wants_more()
            self._claiming = self._claiming or top_up
        if renew_due:
            self._ledger.submit(self._renew, held)
        if top_up:
            self._ledger.submit(self._top_up)

    def _wants_more(self) -> bool:
        """Fewer prompts outstanding than the running batch plus one batch waiting to take its place."""
        with self._lock:
            if self._claims_stopped:
                return False
            return sum(j.outstanding for j in self._held.values()) < 2 * self._batch()

    def _batch(self) -> int:
        """Prompts the schedulers run at once: their admission limits, within their KV pools' slots."""
        slots = [min(s.limit, s.runner.cache.slots) if s.runner.cache is not None else s.limit
                 for s in self._schedulers.values()]
        return max(1, sum(slots)) if slots else self.rt.settings.vl2_max_batch

    def _answered(self, job: GpuJob) -> None:
        with self._lock:
            self._to_commit.append(job)
        self._ledger.submit(self._commit)

    # ---- the ledger thread ------------------------------------------------------------------------------------
    def _commit(self) -> None:
        """Commit every answered job waiting (several when they finished together), in one transaction."""
        with self._lock:
            jobs, self._to_commit = self._to_commit, []
        for job in jobs:
            finish(self.rt, job)
        if jobs:
            self._store(jobs)

    def _store(self, jobs: list[GpuJob]) -> None:
        """``workers.commit`` of ``jobs``. Results the database refuses are the job's own fault: the jobs are then
        committed one by one, and a job refused alone fails saying why."""
        works = [j.work for j in jobs]
        t = time.perf_counter()
        try:
            outcomes = commit(self.rt.db_url, self.rt.worker_id, works, self.rt.config.source_zone)
        except TRANSIENT as exc:
            self._release(jobs, f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - one job's results must not keep the others from committing
            log.exception("jobs %s: commit failed", [j.job_id for j in jobs])
            if len(jobs) > 1:
                for job in jobs:
                    self._store([job])
                return
            w = jobs[0].work
            if w.failure is not None:  # not even its failure commits: its lease expires and it runs again
                self._settle(jobs, [Outcome(w.job_id, "lost", f"commit failed: {exc}")])
                return
            w.results = []
            w.fail("analyzer_error", f"the results of {w.key!r} could not be stored: {type(exc).__name__}: {exc}")
            self._store(jobs)
            return
        count_finished(works, outcomes, time.perf_counter() - t)
        self._settle(jobs, outcomes)

    def _renew(self, job_ids: list[int]) -> None:
        try:
            renew(self.rt.db_url, self.rt.worker_id, self.rt.settings.lease_seconds, job_ids)
        except TRANSIENT as exc:
            log.warning("jobs %s: lease renewal failed (%s); tried again next beat", job_ids, exc)

    def _top_up(self) -> None:
        claimed: list[Claimed] = []
        try:
            with self._lock:
                queues = sorted(self._queues)
            s = self.rt.settings
            claimed = claim_queued(self.rt.db_url, self.rt.worker_id, s.lease_seconds, queues, s.batch_size)
            if claimed:
                log.info("topped up with jobs %s", [c.job_id for c in claimed])
                self._hold(claimed)
        except TRANSIENT as exc:
            log.warning("top-up claim failed (%s); tried again later", exc)
        finally:
            with self._lock:
                self._claiming = False
                self._top_up_after = time.monotonic() + (0.0 if claimed else EMPTY_QUEUE_WAIT)

    def _release(self, jobs: list[GpuJob], reason: str, refund: bool = True) -> None:
        """Give ``jobs`` back to the queue. ``refund``: their attempt is given back too (a transient fault or the
        worker stopping is not the images' fault; a scheduler failure might be, so it counts)."""
        if jobs:
            release(self.rt.db_url, self.rt.worker_id, [j.job_id for j in jobs], refund=refund,
                    note=None if refund else f"its last attempt ended when {reason}")
            log.warning("jobs %s released: %s", [j.job_id for j in jobs], reason)
        self._settle(jobs, [Outcome(j.job_id, "released", reason) for j in jobs])

    def _settle(self, jobs: list[GpuJob], outcomes: list[Outcome]) -> None:
        by_id = {o.job_id: o for o in outcomes}
        with self._lock:
            for job in jobs:
                job.outcome = by_id.get(job.job_id)
                self._held.pop(job.job_id, None)
                job.done.set()
            self._lock.notify_all()


_feeder: Optional[tuple[int, Feeder]] = None  # (pid that made it, feeder): threads do not survive a fork
_feeder_lock = threading.Lock()


def feeder(rt: Runtime) -> Feeder:
    """This process's feeder, made on the first GPU task; a stopping worker lets it finish what it holds."""
    global _feeder
    with _feeder_lock:
        if _feeder is None or _feeder[0] != os.getpid():
            from celery import signals

            made = Feeder(rt)
            _feeder = (os.getpid(), made)
            signals.worker_shutting_down.connect(lambda **_: made.stop_claiming(), weak=False)
            for stopping in (signals.worker_shutdown, signals.worker_process_shutdown):
                stopping.connect(lambda **_: made.close(), weak=False)
        return _feeder[1]
