"""The Celery app: explicit task names, acks_late, prefetch 1, ids in messages, never bytes or tensors.

Queues: ``cpu`` (barcode, CPU OCR), ``gpu`` (DeepSeek-VL2), named per profile in the YAML file.
``vlwatch worker --queues cpu`` runs one; ``celery -A workers.celery_app worker -Q cpu`` works as well.

A worker rides out outages: it reconnects to the broker for as long as it takes, and a task that meets the
database or object storage down is retried with backoff (after which the reconciler sends it again). Every
worker also runs the reconciler, in a thread of its main process (``VLWATCH_WORKER_RECONCILES``): recovery of
lost jobs needs no other process and never waits behind webhook or connector delivery.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

from celery import Celery, signals
from celery.worker.consumer import Consumer as CeleryConsumer

from services.ingest.register import SendJob
from services.settings import Settings
from workers.pipeline import TransientError, run_batch
from workers.runtime import get_runtime

log = logging.getLogger(__name__)

ANALYZE = "vlwatch.analyze"
RECONCILE = "vlwatch.reconcile"


def make_app(settings: Settings) -> Celery:
    app = Celery("vlwatch", broker=settings.broker_url, set_as_current=False)
    visibility = max(int(settings.lease_seconds * 4), 300)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue="cpu",
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,  # task events for Flower (`celery -A workers.celery_app flower`)
        task_send_sent_event=True,
        broker_connection_max_retries=None,  # a broker outage of any length: keep reconnecting
        # Redis: a task unacked by a worker that died comes back after this; the DB lease recovers sooner.
        broker_transport_options={"visibility_timeout": visibility, "unacked_restore_interval": 10},
        # The hard limit (prefork pool): a child stuck in native code past it is ended and replaced. The soft
        # limit is workers.limits.time_limit, per batch, in every pool.
        task_time_limit=settings.hard_time_limit,
        worker_consumer="workers.app:Consumer",
    )
    if settings.worker_max_memory_mb:  # prefork: a child holding more than the cap after a task is replaced
        app.conf.worker_max_memory_per_child = settings.worker_max_memory_mb * 1024  # KiB
    if settings.broker_url.startswith("filesystem://"):  # embedded: messages are files under data_dir
        folder = settings.broker_dir.resolve()
        (folder / "processed").mkdir(parents=True, exist_ok=True)
        app.conf.broker_transport_options = {"data_folder_in": str(folder), "data_folder_out": str(folder),
                                             "processed_folder": str(folder / "processed"), "store_processed": False,
                                             "control_folder": str(folder / "control")}  # else ./control
    # Transient faults (storage or database unreachable) retry with exponential backoff and jitter, 1 s doubling
    # up to 60 s; the jobs stay queued meanwhile and the reconciler would re-send them anyway.
    app.task(name=ANALYZE, bind=True, acks_late=True, autoretry_for=(TransientError,), max_retries=8,
             retry_backoff=1, retry_backoff_max=60, retry_jitter=True)(analyze_task)
    app.task(name=RECONCILE)(reconcile_task)
    _warm_up_on_start(app)
    if settings.worker_reconciles:
        _reconcile_in_workers(app, settings)
    return app


class Consumer(CeleryConsumer):
    """Celery's consumer, able to go on after Redis restarts. Celery 5.7 with kombu 5.7 stops the worker for good
    ("Unrecoverable error: AttributeError: 'NoneType' object has no attribute 'hostname'") when, after a lost
    connection, something touches a Redis channel of that connection again: closing it (kombu restores its
    unacked messages through the client the connection's collect just dropped), or acknowledging a task that was
    running at the time. Here acks, rejects and closes on the lost connection's channels are guarded: nothing is
    lost, as Redis restores unacknowledged messages after the visibility timeout and the reconciler re-sends
    their jobs sooner (a job already committed is then skipped)."""

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        transport = getattr(self.connection, "transport", None)
        lost = [*getattr(transport, "channels", ()), *getattr(transport, "_avail_channels", ())]
        for channel in lost:  # instance attributes shadow the methods, for these channels only
            for name in ("basic_ack", "basic_reject", "close"):
                setattr(channel, name, _on_lost_channel(getattr(channel, name)))
        super().on_connection_error_after_connected(exc)


def _on_lost_channel(fn: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AttributeError:
            log.warning("broker connection lost: a message of it stays unacknowledged (it is restored later)")
            return None

    return guarded


def _reconcile_in_workers(app: Celery, settings: Settings) -> None:
    """The worker's main process runs the reconciler in a thread (``workers.lease.reconcile_forever``: it rides
    out outages) from ready to shutdown. Every worker runs one; they share the work through the database."""
    from workers.lease import reconcile_forever

    stop = threading.Event()

    def on_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        stop.clear()
        threading.Thread(target=reconcile_forever, args=(settings, sender_for(app), stop, _log_reconciled),
                         name="vlwatch-reconciler", daemon=True).start()

    def on_shutdown(**_: Any) -> None:
        stop.set()

    app._vlwatch_reconcile = (on_ready, on_shutdown)  # the signals hold their receivers weakly
    signals.worker_ready.connect(on_ready)
    signals.worker_shutdown.connect(on_shutdown)


def _log_reconciled(counts: dict[str, int]) -> None:
    if any(counts.values()):
        log.info("reconciler: %s", counts)


def _warm_up_on_start(app: Celery) -> None:
    """The process that runs tasks warms up (``Runtime.warm_up``: database connection, the analyzers of the
    profiles its queues serve) before its first task: the solo pool's worker before it reports ready; a prefork
    child beside its start-up, in a thread (it must report up within ``worker_proc_alive_timeout``, 4 s, and a
    model load takes longer; its first task waits for the analyzer); the threads pool's worker when ready. Never
    the prefork parent, which runs no task and must not hold a model."""

    def queues() -> Optional[set[str]]:
        consume = app.amqp.queues.consume_from
        return set(consume) if consume else None

    def on_process_init(**_: Any) -> None:  # prefork children and the solo pool
        from billiard.process import current_process

        rt = get_runtime()
        if current_process().name == "MainProcess":
            rt.warm_up(queues())
        else:
            threading.Thread(target=rt.warm_up, args=(queues(),), name="vlwatch-warm-up", daemon=True).start()

    def on_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app and "prefork" not in type(getattr(sender, "pool", None)).__module__:
            get_runtime().warm_up(queues())  # once per process: the solo pool's is done already

    app._vlwatch_warm_up = (on_process_init, on_ready)  # the signals hold their receivers weakly
    signals.worker_process_init.connect(on_process_init)
    signals.worker_ready.connect(on_ready)


def analyze_task(task: Any, job_ids: list[int] | int) -> dict[str, int]:
    """Thin entry point: the work is ``workers.pipeline.run_batch``, or ``workers.gpu.serve`` for the queues of VL2
    profiles (the continuous-batching scheduler); counts of outcomes by status. The jobs of a batch that failed as
    a whole are sent again through this task's app, one per task."""
    return analyze(job_ids, resend=sender_for(task.app))


def analyze(job_ids: list[int] | int, resend: Optional[SendJob] = None) -> dict[str, int]:
    from workers.gpu import scheduled, serve

    ids = [int(job_ids)] if isinstance(job_ids, int) else [int(j) for j in job_ids]
    rt = get_runtime()
    if scheduled(rt, _message_queue()):
        outcomes = serve(rt, ids)
    else:
        outcomes = run_batch(rt, ids, max(rt.settings.batch_size, len(ids)), resend=resend)
    return {s: sum(o.status == s for o in outcomes) for s in {o.status for o in outcomes}}


def _message_queue() -> Optional[str]:
    """The queue the running task's message came from (None outside a worker)."""
    from celery import current_task

    request = getattr(current_task, "request", None)
    return (getattr(request, "delivery_info", None) or {}).get("routing_key")


def reconcile_task() -> dict:
    from workers.lease import reconcile

    rt = get_runtime()
    return reconcile(rt.db_url, sender_for(get_current_app()), requeue_after=rt.settings.requeue_after)


def get_current_app() -> Celery:
    from celery import current_app

    return current_app


def sender_for(app: Celery):  # noqa: ANN201
    """A ``send_jobs(job_ids, queue)`` function for registration: one task carries the ids of a few jobs."""

    def send_jobs(job_ids: list[int], queue: str) -> None:
        app.send_task(ANALYZE, args=[list(job_ids)], queue=queue)

    return send_jobs
