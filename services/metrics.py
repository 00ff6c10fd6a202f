"""Prometheus metrics: what each long-running process counts, and the state read from SQL and Redis per scrape.

Counted in the process that does the work (``prometheus-client`` metrics below):
- workers: ``vlwatch_jobs_finished_total{queue,status}``, ``vlwatch_job_failures_total{reason}`` (a reason
  class: bad_image, missing_object, analyzer_unavailable, analyzer_error, worker_lost, config),
  ``vlwatch_stage_seconds{stage}`` (fetch, decode, one per analyzer, commit: seconds per job; commit per batch);
- registration (listener, scanner, upload, API): ``vlwatch_images_registered_total``;
- listener: ``vlwatch_notifications_total{outcome}``; API: ``vlwatch_http_requests_total{route,status}``.

Read at scrape time (collectors, registered by the process that serves them):
- ``JobsState`` (API): ``vlwatch_jobs{status,queue}``, ``vlwatch_images``, ``vlwatch_queue_depth{queue}`` (Redis
  list lengths, the numbers KEDA scales on);
- ``DeliveriesState`` (API and dispatcher): ``vlwatch_deliveries{kind,target,status}`` (pending and dead),
  ``vlwatch_delivery_lag_seconds{kind,target}`` (age of the oldest pending delivery), ``vlwatch_outbox_undispatched``.

Prefork workers: with ``PROMETHEUS_MULTIPROC_DIR`` set before ``prometheus_client`` is first imported (``vlwatch
worker --metrics-port`` does it), every child writes its samples there and the parent's HTTP server sums them.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime
from typing import Iterable, Optional

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from services.db import get_engine
from services.schema import (
    ConnectorDelivery, ConnectorTarget, DeliveryStatus, Image, Job, OutboxEvent, WebhookDelivery,
    WebhookSubscription, utcnow,
)

STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

STAGE_SECONDS = Histogram("vlwatch_stage_seconds", "Seconds per job in each pipeline stage (commit: per batch)",
                          ["stage"], buckets=STAGE_BUCKETS)
JOBS_FINISHED = Counter("vlwatch_jobs_finished_total", "Jobs a worker finished, by queue and status",
                        ["queue", "status"])
JOB_FAILURES = Counter("vlwatch_job_failures_total", "Failed jobs by reason class", ["reason"])
IMAGES_REGISTERED = Counter("vlwatch_images_registered_total", "Images this process registered (new jobs)")
NOTIFICATIONS = Counter("vlwatch_notifications_total", "Bucket notifications received, by outcome", ["outcome"])
HTTP_REQUESTS = Counter("vlwatch_http_requests_total", "API and page requests by route and status",
                        ["route", "status"])


def multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


_state: list[Collector] = []
_state_lock = threading.Lock()


def add_state(collector: Collector) -> None:
    """Serve ``collector`` (state read at scrape time) with this process's metrics."""
    with _state_lock:
        _state.append(collector)
        if not multiprocess_mode():
            REGISTRY.register(collector)


def registry() -> CollectorRegistry:
    """What this process exposes: its own metrics (summed over the children in multiprocess mode) and state."""
    if not multiprocess_mode():
        return REGISTRY
    from prometheus_client import multiprocess

    reg = CollectorRegistry()
    multiprocess.MultiProcessCollector(reg)
    for c in _state:
        reg.register(c)
    return reg


def exposition() -> tuple[bytes, str]:
    """The text format of ``registry()`` and its content type, for a ``/metrics`` route."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def start_server(port: int, host: str = "0.0.0.0") -> None:
    """``/metrics`` on its own port, served by a daemon thread (worker and dispatcher processes)."""
    from prometheus_client import start_http_server

    start_http_server(port, host, registry=registry())


def _age(oldest: Optional[datetime], now: datetime) -> float:
    if oldest is None:
        return 0.0
    if oldest.tzinfo is None:  # SQLite hands back naive UTC from aggregates
        oldest = oldest.replace(tzinfo=now.tzinfo)
    return max(0.0, (now - oldest).total_seconds())


class JobsState(Collector):
    """Jobs by status and queue, images, and the broker's queue lengths, read per scrape."""

    def __init__(self, db_url: str, broker_url: Optional[str] = None, queues: Iterable[str] = ("cpu", "gpu")) -> None:
        self.db_url, self.queues = db_url, tuple(queues)
        self.broker_url = broker_url if broker_url and broker_url.startswith(("redis://", "rediss://")) else None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("vlwatch_jobs", "Jobs by status and queue", labels=["status", "queue"])
        with get_engine(self.db_url).connect() as conn:
            rows = conn.execute(select(Job.status, Job.queue, func.count()).group_by(Job.status, Job.queue)).all()
            images = conn.scalar(select(func.count()).select_from(Image))
        queues = set(self.queues) | {q for _, q, _ in rows}
        seen = {(s, q): n for s, q, n in rows}
        for status in ("queued", "running", "succeeded", "failed"):
            for queue in sorted(queues):
                jobs.add_metric([status, queue], seen.get((status, queue), 0))
        yield jobs
        yield GaugeMetricFamily("vlwatch_images", "Images registered (rows of images)", value=images or 0)
        if self.broker_url:
            yield self._queue_depth(sorted(queues))

    def _queue_depth(self, queues: list[str]) -> GaugeMetricFamily:
        """Celery's Redis transport keeps a queue as a list named after it (plus ``<queue>\\x06\\x16<n>`` lists
        for task priorities)."""
        import redis

        depth = GaugeMetricFamily("vlwatch_queue_depth", "Task messages waiting in the broker", labels=["queue"])
        client = redis.Redis.from_url(self.broker_url, socket_timeout=2)
        try:
            pipe = client.pipeline()
            for q in queues:
                for key in (q, *(f"{q}\x06\x16{p}" for p in (1, 2, 3, 4, 5, 6, 7, 8, 9))):
                    pipe.llen(key)
            lengths = pipe.execute()
        finally:
            client.close()
        per = 10
        for i, q in enumerate(queues):
            depth.add_metric([q], sum(lengths[i * per:(i + 1) * per]))
        return depth


class DeliveriesState(Collector):
    """Webhook and connector deliveries pending and dead, and how old the oldest pending one is."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url

    def collect(self) -> Iterable[GaugeMetricFamily]:
        counts = GaugeMetricFamily("vlwatch_deliveries", "Deliveries not delivered, by kind, target and status",
                                   labels=["kind", "target", "status"])
        lag = GaugeMetricFamily("vlwatch_delivery_lag_seconds", "Age of the oldest pending delivery",
                                labels=["kind", "target"])
        open_states = (DeliveryStatus.pending.value, DeliveryStatus.dead.value)
        now = utcnow()
        with get_engine(self.db_url).connect() as conn:
            for kind, d, t, fk, targets in (
                ("webhook", WebhookDelivery, WebhookSubscription, WebhookDelivery.subscription_id,
                 select(WebhookSubscription.name).where(WebhookSubscription.active.is_(True))),
                ("connector", ConnectorDelivery, ConnectorTarget, ConnectorDelivery.connector_id,
                 select(ConnectorTarget.name).where(ConnectorTarget.active.is_(True))),
            ):
                rows = conn.execute(select(t.name, d.status, func.count(), func.min(d.created_at))
                                    .join(t, t.id == fk).where(d.status.in_(open_states))
                                    .group_by(t.name, d.status)).all()
                found = {(name, status): (n, oldest) for name, status, n, oldest in rows}
                for name in sorted(set(conn.scalars(targets)) | {name for name, _ in found}):
                    for status in open_states:
                        counts.add_metric([kind, name, status], found.get((name, status), (0, None))[0])
                    lag.add_metric([kind, name], _age(found.get((name, "pending"), (0, None))[1], now))
            undispatched, oldest = conn.execute(select(func.count(), func.min(OutboxEvent.created_at))
                                                .where(OutboxEvent.dispatched_at.is_(None))).one()
        yield counts
        lag.add_metric(["outbox", ""], _age(oldest, now))
        yield lag
        yield GaugeMetricFamily("vlwatch_outbox_undispatched", "Outbox events not yet fanned out to deliveries",
                                value=undispatched or 0)
