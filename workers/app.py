"""The Celery app: explicit task names, acks_late, prefetch 1, ids in messages, never bytes or tensors.

Queues: ``cpu`` (barcode, CPU OCR), ``gpu`` (DeepSeek-VL2), named per profile in the YAML file.
``vlwatch worker --queues cpu`` runs one; ``celery -A workers.celery_app worker -Q cpu`` works as well.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from celery import Celery, signals

from services.settings import Settings
from workers.pipeline import TransientError, run_batch
from workers.runtime import get_runtime

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
        # Redis: a task unacked by a worker that died comes back after this; the DB lease recovers sooner.
        broker_transport_options={"visibility_timeout": visibility, "unacked_restore_interval": 10},
    )
    if settings.broker_url.startswith("filesystem://"):  # embedded: messages are files under data_dir
        folder = settings.broker_dir.resolve()
        (folder / "processed").mkdir(parents=True, exist_ok=True)
        app.conf.broker_transport_options = {"data_folder_in": str(folder), "data_folder_out": str(folder),
                                             "processed_folder": str(folder / "processed"), "store_processed": False}
    # Transient faults (storage or database unreachable) retry with exponential backoff and jitter, 1 s doubling
    # up to 60 s; the jobs stay queued meanwhile and the reconciler would re-send them anyway.
    app.task(name=ANALYZE, acks_late=True, autoretry_for=(TransientError,), max_retries=8, retry_backoff=1,
             retry_backoff_max=60, retry_jitter=True)(analyze)
    app.task(name=RECONCILE)(reconcile_task)
    _warm_up_on_start(app)
    return app


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


def analyze(job_ids: list[int] | int) -> dict[str, int]:
    """Thin entry point: the work is ``workers.pipeline.run_batch``, or ``workers.gpu.serve`` for the queues of VL2
    profiles (the continuous-batching scheduler); counts of outcomes by status."""
    from workers.gpu import scheduled, serve

    ids = [int(job_ids)] if isinstance(job_ids, int) else [int(j) for j in job_ids]
    rt = get_runtime()
    if scheduled(rt, _message_queue()):
        outcomes = serve(rt, ids)
    else:
        outcomes = run_batch(rt, ids, max(rt.settings.batch_size, len(ids)))
    return {s: sum(o.status == s for o in outcomes) for s in {o.status for o in outcomes}}


def _message_queue() -> Optional[str]:
    """The queue the running task's message came from (None outside a worker)."""
    from celery import current_task

    request = getattr(current_task, "request", None)
    return (getattr(request, "delivery_info", None) or {}).get("routing_key")


def reconcile_task() -> dict:
    from workers.lease import reconcile

    rt = get_runtime()
    return reconcile(rt.db_url, sender_for(get_current_app()), requeue_after=rt.settings.requeue_after_seconds)


def get_current_app() -> Celery:
    from celery import current_app

    return current_app


def sender_for(app: Celery):  # noqa: ANN201
    """A ``send_jobs(job_ids, queue)`` function for registration: one task carries the ids of a few jobs."""

    def send_jobs(job_ids: list[int], queue: str) -> None:
        app.send_task(ANALYZE, args=[list(job_ids)], queue=queue)

    return send_jobs
