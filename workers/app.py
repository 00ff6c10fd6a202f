"""The Celery app: explicit task names, acks_late, prefetch 1, ids in messages, never bytes or tensors.

Queues: ``cpu`` (barcode, CPU OCR), ``gpu`` (DeepSeek-VL2), named per profile in the YAML file.
``vlwatch worker --queues cpu`` runs one; ``celery -A workers.celery_app worker -Q cpu`` works as well.
"""

from __future__ import annotations

import logging

from celery import Celery, Task

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
        worker_send_task_events=False,
        # Redis: a task unacked by a worker that died comes back after this; the DB lease recovers sooner.
        broker_transport_options={"visibility_timeout": visibility, "unacked_restore_interval": 10},
    )
    if settings.broker_url.startswith("filesystem://"):  # embedded: messages are files under data_dir
        folder = settings.broker_dir.resolve()
        (folder / "processed").mkdir(parents=True, exist_ok=True)
        app.conf.broker_transport_options = {"data_folder_in": str(folder), "data_folder_out": str(folder),
                                             "processed_folder": str(folder / "processed"), "store_processed": False}
    app.task(name=ANALYZE, bind=True, acks_late=True, max_retries=8)(analyze)
    app.task(name=RECONCILE)(reconcile_task)
    return app


def analyze(self: Task, job_ids: list[int] | int) -> dict[str, int]:
    """Thin entry point: the work is ``workers.pipeline.run_batch``."""
    ids = [int(job_ids)] if isinstance(job_ids, int) else [int(j) for j in job_ids]
    rt = get_runtime()
    try:
        outcomes = run_batch(rt, ids, max(rt.settings.batch_size, len(ids)))
        return {s: sum(o.status == s for o in outcomes) for s in {o.status for o in outcomes}}
    except TransientError as exc:
        countdown = min(2 ** self.request.retries, 60)
        log.warning("%s; retrying in %ss", exc, countdown)
        raise self.retry(exc=exc, countdown=countdown) from None


def reconcile_task() -> dict:
    from workers.reconcile import reconcile

    rt = get_runtime()
    return reconcile(rt.db_url, sender_for(get_current_app()), requeue_after=rt.settings.requeue_after_seconds)


def get_current_app() -> Celery:
    from celery import current_app

    return current_app


def sender_for(app: Celery):  # noqa: ANN201
    """A ``send_jobs(job_ids, queue)`` function for services.ingest: one task carries the ids of a few jobs."""

    def send_jobs(job_ids: list[int], queue: str) -> None:
        app.send_task(ANALYZE, args=[list(job_ids)], queue=queue)

    return send_jobs
