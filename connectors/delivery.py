"""Connector delivery from the outbox: the same pending -> delivered | dead life, retry schedule with jitter,
claims with a lease and replay as webhook deliveries, with per-connector state in ``connector_deliveries``.

A round claims the due deliveries of the connectors this process runs, applies each connector's events as one
batch in one transaction of its target database (:func:`connectors.base.deliver_batch`), and records every
outcome: ``delivered``; a target that cannot be reached keeps its events pending along the retry schedule
(nothing is lost; it catches up when the database is back); a target that rejects an event's rows
dead-letters that event with the database's message while the rest of the batch is delivered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Mapping, Optional, Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from connectors.base import Connector, deliver_batch
from connectors.webhooks import RetrySchedule
from services.db import session_scope
from services.schema import ConnectorDelivery, ConnectorTarget, DeliveryStatus, OutboxEvent, utcnow

log = logging.getLogger(__name__)

CONNECTOR_EVENTS = ("job.succeeded",)  # what connectors consume; other events make no deliveries
CLAIM_SECONDS = 300.0  # longer than a batch can take against a slow target


def _locking(session: Session, q):  # noqa: ANN001, ANN202
    return q.with_for_update(skip_locked=True) if session.get_bind().dialect.name == "postgresql" else q


def _insert(session: Session):  # noqa: ANN202
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def sync_connectors(session: Session, kinds: Mapping[str, str]) -> None:
    """Make the ``connectors`` table match the YAML file: ``{name: kind}`` active, every other one inactive
    (its history stays; no new deliveries are made for it)."""
    existing = {c.name: c for c in session.execute(select(ConnectorTarget)).scalars()}
    for name, kind in kinds.items():
        row = existing.get(name)
        if row is None:
            session.add(ConnectorTarget(name=name, kind=kind, event_types=list(CONNECTOR_EVENTS), active=True,
                                        created_at=utcnow()))
        else:
            row.kind, row.active = kind, True
    for name, row in existing.items():
        if name not in kinds:
            row.active = False
    session.flush()


def fan_out_connectors(session: Session, events: Sequence[OutboxEvent], now: datetime) -> int:
    """One pending delivery per active connector for each event it consumes (called by the outbox fan-out,
    in its transaction)."""
    targets = session.execute(select(ConnectorTarget.id, ConnectorTarget.event_types)
                              .where(ConnectorTarget.active.is_(True))).all()
    rows = [{"event_id": ev.id, "connector_id": cid, "status": DeliveryStatus.pending.value, "attempts": 0,
             "next_attempt_at": now, "created_at": now}
            for ev in events for cid, types in targets if ev.type in types]
    if rows:
        session.execute(_insert(session)(ConnectorDelivery).on_conflict_do_nothing(
            index_elements=["event_id", "connector_id"]), rows)
    return len(rows)


@dataclass(frozen=True)
class _Claimed:
    id: int
    attempts: int
    connector: str
    event_id: str
    payload: dict[str, Any]


def _claim_due(db_url: str, names: Sequence[str], limit: int, now: datetime, lease: float) -> list[_Claimed]:
    with session_scope(db_url) as s:
        mine = select(ConnectorTarget.id).where(ConnectorTarget.active.is_(True), ConnectorTarget.name.in_(names))
        q = (select(ConnectorDelivery.id).where(ConnectorDelivery.status == DeliveryStatus.pending.value,
                                                ConnectorDelivery.next_attempt_at <= now,
                                                ConnectorDelivery.connector_id.in_(mine))
             .order_by(ConnectorDelivery.next_attempt_at, ConnectorDelivery.id).limit(limit))
        ids = s.execute(_locking(s, q)).scalars().all()
        if not ids:
            return []
        s.execute(update(ConnectorDelivery).where(ConnectorDelivery.id.in_(ids))
                  .values(next_attempt_at=now + timedelta(seconds=lease)))
        rows = s.execute(
            select(ConnectorDelivery.id, ConnectorDelivery.attempts, ConnectorTarget.name, OutboxEvent.event_id,
                   OutboxEvent.payload)
            .join(ConnectorTarget, ConnectorTarget.id == ConnectorDelivery.connector_id)
            .join(OutboxEvent, OutboxEvent.id == ConnectorDelivery.event_id)
            .where(ConnectorDelivery.id.in_(ids)).order_by(ConnectorDelivery.id)).all()
    return [_Claimed(*r) for r in rows]


@dataclass
class ConnectorCounts:
    sent: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # connector -> last message of this round


def deliver_connectors_due(db_url: str, connectors: Mapping[str, Connector], schedule: RetrySchedule,
                           limit: int = 500, now: Optional[datetime] = None) -> ConnectorCounts:
    """Apply every due delivery of ``connectors`` once (one batch per connector), then record each outcome."""
    counts = ConnectorCounts()
    if not connectors:
        return counts
    claimed = _claim_due(db_url, list(connectors), limit, now or utcnow(), CLAIM_SECONDS)
    if not claimed:
        return counts
    by_connector: dict[str, list[_Claimed]] = {}
    for c in claimed:
        by_connector.setdefault(c.connector, []).append(c)
    outcomes: list[dict[str, Any]] = []
    for name, items in by_connector.items():
        # A duplicate event id cannot occur within one connector (unique event_id, connector_id).
        result = deliver_batch(connectors[name], [(c.event_id, c.payload) for c in items])
        done = utcnow()
        delivered = set(result.delivered)
        for c in items:
            values: dict[str, Any] = {"id": c.id, "attempts": c.attempts + 1, "last_attempt_at": done}
            if c.event_id in delivered:
                values.update(status=DeliveryStatus.delivered.value, delivered_at=done, next_attempt_at=None,
                              last_error=None)
                counts.delivered += 1
                outcomes.append(values)
                continue
            if c.event_id in result.dead:
                message, delay = result.dead[c.event_id], None
            else:
                message = result.retry.get(c.event_id, "not applied")
                delay = schedule.next_delay(c.attempts + 1)
            values["last_error"] = message[:4000]
            counts.errors[name] = message
            if delay is None:
                values.update(status=DeliveryStatus.dead.value, next_attempt_at=None)
                counts.dead += 1
                log.warning("connector %s: event %s dead-lettered after %d attempt(s): %s", name, c.event_id,
                            c.attempts + 1, message)
            else:
                values.update(status=DeliveryStatus.pending.value, next_attempt_at=done + timedelta(seconds=delay))
                counts.retrying += 1
            outcomes.append(values)
    with session_scope(db_url) as s:
        s.execute(update(ConnectorDelivery), outcomes)  # one executemany by primary key
    counts.sent = len(claimed)
    return counts


def pending_connector_deliveries(session: Session) -> int:
    active = select(ConnectorTarget.id).where(ConnectorTarget.active.is_(True))
    return int(session.scalar(select(func.count()).select_from(ConnectorDelivery).where(
        ConnectorDelivery.status == DeliveryStatus.pending.value, ConnectorDelivery.connector_id.in_(active))) or 0)


def replay(session: Session, *, since: Optional[datetime] = None, connector: Optional[str] = None,
           status: Sequence[str] = (DeliveryStatus.dead.value, DeliveryStatus.delivered.value)) -> int:
    """Deliver again the events created since ``since``: matching deliveries (dead and delivered by default;
    connector writes are idempotent upserts, so re-applying is safe) become pending and due now, and events
    that have no delivery for an active connector (it was added later) get one. Returns how many are due."""
    targets = session.execute(select(ConnectorTarget).where(ConnectorTarget.active.is_(True))).scalars().all()
    if connector is not None:
        targets = [t for t in targets if t.name == connector]
        if not targets:
            raise ValueError(f"unknown or inactive connector {connector!r}")
    now = utcnow()
    ids = [t.id for t in targets]
    q = select(ConnectorDelivery.id).join(OutboxEvent, OutboxEvent.id == ConnectorDelivery.event_id).where(
        ConnectorDelivery.status.in_(list(status)), ConnectorDelivery.connector_id.in_(ids))
    if since is not None:
        q = q.where(OutboxEvent.created_at >= since)
    reset = session.execute(q).scalars().all()
    if reset:
        session.execute(update(ConnectorDelivery).where(ConnectorDelivery.id.in_(reset)).values(
            status=DeliveryStatus.pending.value, next_attempt_at=now))
    # Events fanned out before a connector existed: give them a delivery now.
    ev = select(OutboxEvent).where(OutboxEvent.dispatched_at.is_not(None))
    if since is not None:
        ev = ev.where(OutboxEvent.created_at >= since)
    created = 0
    for t in targets:
        have = select(ConnectorDelivery.event_id).where(ConnectorDelivery.connector_id == t.id)
        missing = session.execute(ev.where(OutboxEvent.type.in_(list(t.event_types)),
                                           OutboxEvent.id.not_in(have))).scalars().all()
        if missing:
            session.execute(_insert(session)(ConnectorDelivery).on_conflict_do_nothing(
                index_elements=["event_id", "connector_id"]),
                [{"event_id": e.id, "connector_id": t.id, "status": DeliveryStatus.pending.value, "attempts": 0,
                  "next_attempt_at": now, "created_at": now} for e in missing])
            created += len(missing)
    return len(reset) + created


@dataclass
class ConnectorStatus:
    name: str
    kind: str
    active: bool
    pending: int = 0
    due: int = 0
    delivered: int = 0
    dead: int = 0
    oldest_pending_at: Optional[datetime] = None
    last_delivered_at: Optional[datetime] = None
    last_error: Optional[str] = None


def status(session: Session, now: Optional[datetime] = None) -> list[ConnectorStatus]:
    """Per-connector delivery state: counts by status, due now, lag (oldest pending event), last error."""
    now = now or utcnow()
    out = []
    for t in session.execute(select(ConnectorTarget).order_by(ConnectorTarget.name)).scalars():
        st = ConnectorStatus(t.name, t.kind, t.active)
        where = ConnectorDelivery.connector_id == t.id
        for s_, n in session.execute(select(ConnectorDelivery.status, func.count()).where(where)
                                     .group_by(ConnectorDelivery.status)).all():
            setattr(st, s_, int(n))
        st.due = int(session.scalar(select(func.count()).select_from(ConnectorDelivery).where(
            where, ConnectorDelivery.status == DeliveryStatus.pending.value,
            ConnectorDelivery.next_attempt_at <= now)) or 0)
        st.oldest_pending_at = session.scalar(
            select(func.min(OutboxEvent.created_at)).join(ConnectorDelivery, ConnectorDelivery.event_id == OutboxEvent.id)
            .where(where, ConnectorDelivery.status == DeliveryStatus.pending.value))
        st.last_delivered_at = session.scalar(select(func.max(ConnectorDelivery.delivered_at)).where(where))
        st.last_error = session.scalar(
            select(ConnectorDelivery.last_error).where(where, ConnectorDelivery.last_error.is_not(None))
            .order_by(ConnectorDelivery.last_attempt_at.desc(), ConnectorDelivery.id.desc()).limit(1))
        out.append(st)
    return out
