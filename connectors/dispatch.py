"""The dispatcher: each round fans new outbox events out to deliveries, then sends the due webhook deliveries and
applies the due connector deliveries. Both go through the one delivery lifecycle (:mod:`connectors.lifecycle`),
so retries along the schedule, dead-letters, leases and replay behave alike for both.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from datetime import datetime
from typing import Iterable, Mapping, Optional

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from connectors import lifecycle
from connectors.databases import CONNECTORS, deliver_connectors
from connectors.lifecycle import Counts, RetrySchedule
from connectors.targets import Connector
from connectors.webhooks import WEBHOOKS, WebhookSender, deliver_webhooks
from services.db import session_scope
from services.schema import OutboxEvent

KINDS = (WEBHOOKS, CONNECTORS)


def fan_out(session: Session, limit: int = 500) -> int:
    """Deliveries for up to ``limit`` undispatched events, to every active subscription and connector they
    match. Returns deliveries made."""
    return lifecycle.fan_out(session, KINDS, limit)


def pending_deliveries(session: Session) -> int:
    """Deliveries not yet final for active targets (a paused one's wait for it), plus events not yet fanned
    out: zero means a drain loop is done."""
    undispatched = session.scalar(select(func.count()).select_from(OutboxEvent)
                                  .where(OutboxEvent.dispatched_at.is_(None)))
    return int(undispatched or 0) + sum(lifecycle.pending(session, kind) for kind in KINDS)


def dispatch_once(db_url: str, schedule: Iterable[float] | RetrySchedule, timeout: float,
                  now: Optional[datetime] = None, connectors: Optional[Mapping[str, Connector]] = None,
                  sender: Optional[WebhookSender] = None) -> Counts:
    """One round: fan out new events, send due webhook deliveries (with ``sender``, kept by a caller that runs
    rounds in a loop; else one made for this round), apply due deliveries of ``connectors`` (name -> connector)."""
    sched = schedule if isinstance(schedule, RetrySchedule) else RetrySchedule(tuple(schedule))
    with session_scope(db_url) as s:
        counts = Counts(fanned_out=fan_out(s))
    with WebhookSender() if sender is None else nullcontext(sender) as webhooks:
        counts += deliver_webhooks(db_url, webhooks, sched, timeout, now=now)
    if connectors:
        counts += deliver_connectors(db_url, connectors, sched, now=now)
    return counts


def run_dispatcher(db_url: str, schedule: Iterable[float] | RetrySchedule, timeout: float, stop: threading.Event,
                   poll_interval: float = 1.0, connectors: Optional[Mapping[str, Connector]] = None) -> None:
    """Dispatch until ``stop`` is set; busy rounds follow each other without waiting."""
    with WebhookSender() as sender:
        while not stop.is_set():
            counts = dispatch_once(db_url, schedule, timeout, connectors=connectors, sender=sender)
            if counts.sent == 0 and counts.fanned_out == 0:
                stop.wait(poll_interval)
