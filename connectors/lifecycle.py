"""The one delivery lifecycle, for webhooks and database connectors alike.

An outbox event becomes one delivery per active target whose ``event_types`` it matches (:func:`fan_out`). A
delivery is ``pending`` until it is ``delivered`` or ``dead``::

    pending --claim_due--> leased --deliver--> record --> delivered
                                                      |-> pending, due after the schedule's next delay (jitter)
                                                      '-> dead (schedule exhausted, or rejected for good)
    dead (or delivered) --replay--> pending, due now

A :class:`DeliveryKind` says which deliveries: their table, their targets' table and the foreign key between
them. What delivering means is up to the dispatcher (:mod:`connectors.dispatch`): a function that gets a batch of
claimed deliveries and returns an :class:`Outcome` for each. Claims can be narrowed to named targets, so each
target is claimed and delivered on its own.

Concurrency: on PostgreSQL the fan-out and the claim lock their rows with ``FOR UPDATE SKIP LOCKED``, and a claim
moves ``next_attempt_at`` to the end of a lease that the claiming dispatcher renews (:func:`renew`) for as long as
it holds the delivery. So two dispatchers never deliver the same row at once, and the rows of one that dies
mid-batch fall due again when its last lease ends (at least once: receivers dedupe on the event id, connector
writes are idempotent). SQLite has one writer at a time and ignores the lock clause.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Collection, Optional, Sequence

from sqlalchemy import Select, Text, cast, func, literal, select, update
from sqlalchemy.orm import Session

from services.db import insert_ignore
from services.safetext import mask_secrets
from services.schema import DeliveryStatus, OutboxEvent, UTCDateTime, utcnow

log = logging.getLogger(__name__)

PENDING, DELIVERED, DEAD = DeliveryStatus.pending.value, DeliveryStatus.delivered.value, DeliveryStatus.dead.value

MAX_ERROR = 1000  # characters of a failed attempt's error kept in ``last_error`` (already masked)

DEFAULT_DELAYS: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
"""Svix-like: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h; then dead-letter (7 attempts in all)."""


@dataclass(frozen=True)
class RetrySchedule:
    """Delays (seconds) before attempts 2, 3, ...; each stretched or shrunk by up to ``jitter`` (a fraction).

    ``rand`` returns a float in [0, 1); inject ``random.Random(seed).random`` for reproducible jitter."""

    delays: Sequence[float] = DEFAULT_DELAYS
    jitter: float = 0.2
    rand: Callable[[], float] = random.random

    def next_delay(self, attempts_made: int) -> Optional[float]:
        """Seconds until the next attempt after ``attempts_made`` failed attempts; None: dead-letter."""
        if attempts_made < 1 or attempts_made > len(self.delays):
            return None
        base = float(self.delays[attempts_made - 1])
        return max(0.0, base * (1 + self.jitter * (2 * self.rand() - 1)))


@dataclass(frozen=True)
class DeliveryKind:
    """Which deliveries: ``table`` (an ORM class with the delivery columns), ``targets`` (an ORM class with
    ``id``, ``name``, ``event_types`` and ``active``) and ``target_key``, the delivery column naming its target."""

    name: str  # in log lines: "webhook", "connector"
    table: Any
    targets: Any
    target_key: str
    keeps_status_code: bool = False  # the table has ``last_status_code`` (a receiver's HTTP status)

    @property
    def target_id(self) -> Any:
        return getattr(self.table, self.target_key)

    def active_targets(self, names: Optional[Collection[str]] = None) -> Select:
        """Ids of the active targets (of those ``names`` when given)."""
        q = select(self.targets.id).where(self.targets.active.is_(True))
        return q if names is None else q.where(self.targets.name.in_(list(names)))


@dataclass(frozen=True)
class Claimed:
    """A delivery leased to this process, with what delivering it needs."""

    id: int
    attempts: int  # attempts made before this one
    event_id: str  # the outbox event's ``msg_...`` id: the webhook-id, the key a connector stores
    body: str  # the event's payload as stored (JSON text)
    target: Any  # the target's row (a WebhookSubscription, a ConnectorTarget)


@dataclass(frozen=True)
class Outcome:
    claimed: Claimed
    error: Optional[str] = None  # None: delivered
    status_code: Optional[int] = None  # the receiver's HTTP status, when there was an answer
    final: bool = False  # rejected for good: dead now, whatever the schedule has left


@dataclass
class Counts:
    fanned_out: int = 0  # deliveries made by fan-out
    sent: int = 0  # deliveries attempted; each ends delivered, retrying or dead
    delivered: int = 0
    retrying: int = 0
    dead: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)
        return self


def among(column: Any, ids: Collection[int]) -> Any:
    """``column IN ids`` (ids distinct); a contiguous run is one range: a list of thousands of parameters costs
    far more to render, send and plan, and batches of fresh deliveries usually are such runs."""
    lo, hi = min(ids), max(ids)
    return column.between(lo, hi) if hi - lo + 1 == len(ids) else column.in_(sorted(ids))


def matches(event_types: Sequence[str], event_type: str) -> bool:
    return "*" in event_types or event_type in event_types


def _new_delivery(kind: DeliveryKind, event_id: int, target_id: int, now: datetime) -> dict[str, Any]:
    return {"event_id": event_id, kind.target_key: target_id, "status": PENDING, "attempts": 0,
            "next_attempt_at": now, "created_at": now}


def fan_out(session: Session, kinds: Sequence[DeliveryKind], limit: int = 500) -> int:
    """One pending delivery per active matching target of every kind, for up to ``limit`` undispatched events,
    which are marked dispatched in the same transaction. Returns deliveries made (an existing one is left as it
    is). The rows are made by the database, one ``INSERT ... SELECT`` per target."""
    now = utcnow()
    batch = (select(OutboxEvent.id).where(OutboxEvent.dispatched_at.is_(None)).order_by(OutboxEvent.id)
             .limit(limit).with_for_update(skip_locked=True))
    events = session.execute(update(OutboxEvent).where(OutboxEvent.id.in_(batch.scalar_subquery()))
                             .values(dispatched_at=now).returning(OutboxEvent.id, OutboxEvent.type)
                             .execution_options(synchronize_session=False)).all()
    if not events:
        return 0
    ids = [ev.id for ev in events]
    types = {ev.type for ev in events}
    made = 0
    for kind in kinds:
        columns = ("event_id", kind.target_key, "status", "attempts", "next_attempt_at", "created_at")
        for target_id, event_types in session.execute(select(kind.targets.id, kind.targets.event_types)
                                                      .where(kind.targets.active.is_(True))).all():
            wanted = [t for t in types if matches(event_types, t)]
            if not wanted:
                continue
            rows = select(OutboxEvent.id, literal(target_id), literal(PENDING), literal(0),
                          literal(now, UTCDateTime), literal(now, UTCDateTime)).where(among(OutboxEvent.id, ids))
            if len(wanted) < len(types):
                rows = rows.where(OutboxEvent.type.in_(wanted))
            made += insert_ignore(session, kind.table, (), keys=("event_id", kind.target_key),
                                  from_select=(columns, rows)).rowcount
    return made


def claim_due(session: Session, kind: DeliveryKind, *, now: datetime, lease_s: float, limit: int,
              targets: Optional[Collection[str]] = None, target_ids: Optional[Collection[int]] = None
              ) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries of active targets (of those ``targets`` by name, or ``target_ids``,
    when given; a paused target's wait), oldest due first: their ``next_attempt_at`` moves to ``now + lease_s``."""
    d = kind.table
    due = select(d.id).where(d.status == PENDING, d.next_attempt_at <= now,
                             kind.target_id.in_(kind.active_targets(targets)))
    if target_ids is not None:  # each target's due deliveries are an index range of their own
        due = due.where(kind.target_id.in_(list(target_ids)))
    due = due.order_by(d.next_attempt_at, d.id).limit(limit).with_for_update(skip_locked=True)
    leased = session.execute(update(d).where(d.id.in_(due.scalar_subquery()))
                             .values(next_attempt_at=now + timedelta(seconds=lease_s))
                             .returning(d.id, d.attempts, d.event_id, kind.target_id)
                             .execution_options(synchronize_session=False)).all()
    if not leased:
        return []
    events = {i: (event_id, body) for i, event_id, body in session.execute(
        select(OutboxEvent.id, OutboxEvent.event_id, cast(OutboxEvent.payload, Text))
        .where(among(OutboxEvent.id, {r[2] for r in leased})))}
    found = session.scalars(select(kind.targets).where(kind.targets.id.in_({r[3] for r in leased})))
    by_id = {t.id: t for t in found}
    return [Claimed(i, attempts, *events[event], by_id[t])
            for i, attempts, event, t in sorted(leased, key=lambda r: r[0])]


def renew(session: Session, kind: DeliveryKind, ids: Collection[int], until: datetime) -> None:
    """Extend the lease of claimed deliveries not yet recorded: a live dispatcher keeps what it holds, however
    slow their target; a dead one's fall due when the last lease it took ends."""
    d = kind.table
    for chunk in _chunks(sorted(ids), 5000):
        session.execute(update(d).where(among(d.id, chunk), d.status == PENDING).values(next_attempt_at=until)
                        .execution_options(synchronize_session=False))


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[k:k + size] for k in range(0, len(items), size)]


def record(session: Session, kind: DeliveryKind, outcomes: Sequence[Outcome], schedule: RetrySchedule) -> Counts:
    """Write each outcome: delivered; pending again after the schedule's next delay; or dead. Deliveries that
    succeeded with the same answer are written by one statement; errors are stored masked and truncated."""
    d = kind.table
    done = utcnow()
    counts = Counts(sent=len(outcomes))
    delivered: dict[Optional[int], list[int]] = {}  # status code -> ids
    failed: list[dict[str, Any]] = []
    for o in outcomes:
        c = o.claimed
        if o.error is None:
            delivered.setdefault(o.status_code, []).append(c.id)
            continue
        values: dict[str, Any] = {"id": c.id, "attempts": c.attempts + 1, "last_attempt_at": done,
                                  "last_error": mask_secrets(o.error)[:MAX_ERROR]}
        if kind.keeps_status_code:
            values["last_status_code"] = o.status_code
        delay = None if o.final else schedule.next_delay(c.attempts + 1)
        if delay is None:
            failed.append(values | {"status": DEAD, "next_attempt_at": None})
            counts.dead += 1
            log.warning("%s delivery %d (event %s) dead after %d attempt(s): %s", kind.name, c.id, c.event_id,
                        c.attempts + 1, values["last_error"])
        else:
            failed.append(values | {"status": PENDING, "next_attempt_at": done + timedelta(seconds=delay)})
            counts.retrying += 1
    for code, ids in delivered.items():
        values = {"status": DELIVERED, "attempts": d.attempts + 1, "last_attempt_at": done, "delivered_at": done,
                  "next_attempt_at": None, "last_error": None}
        if kind.keeps_status_code:
            values["last_status_code"] = code
        for chunk in _chunks(sorted(ids), 5000):
            session.execute(update(d).where(among(d.id, chunk)).values(values)
                            .execution_options(synchronize_session=False))
        counts.delivered += len(ids)
    if failed:
        session.execute(update(d), failed)  # one executemany by primary key
    return counts


def replay(session: Session, kind: DeliveryKind, *, status: Sequence[str],
           targets: Optional[Collection[str]] = None, event_ids: Optional[Sequence[str]] = None,
           since: Optional[datetime] = None) -> int:
    """Make matching deliveries pending again, due now; attempts are kept (history). Returns how many."""
    d = kind.table
    q = select(d.id).join(OutboxEvent, OutboxEvent.id == d.event_id).where(d.status.in_(list(status)))
    if targets is not None:
        q = q.where(kind.target_id.in_(select(kind.targets.id).where(kind.targets.name.in_(list(targets)))))
    if event_ids:
        q = q.where(OutboxEvent.event_id.in_(list(event_ids)))
    if since is not None:
        q = q.where(OutboxEvent.created_at >= since)
    ids = session.scalars(q).all()
    if ids:
        session.execute(update(d).where(d.id.in_(ids)).values(status=PENDING, next_attempt_at=utcnow()))
    return len(ids)


def deliver_missed(session: Session, kind: DeliveryKind, targets: Collection[str],
                   since: Optional[datetime] = None) -> int:
    """Give ``targets`` a delivery, due now, of every dispatched event they match but never got (they were
    added after its fan-out). Returns how many were made."""
    now = utcnow()
    made = 0
    for t in session.scalars(select(kind.targets).where(kind.targets.name.in_(list(targets)))):
        had = select(kind.table.event_id).where(kind.target_id == t.id)
        q = select(OutboxEvent.id, OutboxEvent.type).where(OutboxEvent.dispatched_at.is_not(None),
                                                          OutboxEvent.id.not_in(had))
        if since is not None:
            q = q.where(OutboxEvent.created_at >= since)
        rows = [_new_delivery(kind, ev.id, t.id, now) for ev in session.execute(q)
                if matches(t.event_types, ev.type)]
        if rows:
            insert_ignore(session, kind.table, rows, keys=("event_id", kind.target_key))
        made += len(rows)
    return made


def counts_by_status(session: Session, kind: DeliveryKind, target_id: int) -> dict[str, int]:
    """``{"pending": n, "delivered": n, "dead": n}`` for one target."""
    d = kind.table
    rows = session.execute(select(d.status, func.count()).where(kind.target_id == target_id)
                           .group_by(d.status)).all()
    return {s.value: 0 for s in DeliveryStatus} | {status: int(n) for status, n in rows}


def pending(session: Session, kind: DeliveryKind) -> int:
    """Deliveries not yet final for active targets (a paused or removed target's wait for it)."""
    d = kind.table
    return int(session.scalar(select(func.count()).select_from(d).where(
        d.status == PENDING, kind.target_id.in_(kind.active_targets()))) or 0)


@dataclass
class DeliveryState:
    pending: int = 0
    due: int = 0
    delivered: int = 0
    dead: int = 0
    oldest_pending_at: Optional[datetime] = None  # the event's creation: the target's lag
    last_delivered_at: Optional[datetime] = None
    last_error: Optional[str] = None


def state(session: Session, kind: DeliveryKind, target_id: int, now: datetime) -> DeliveryState:
    """One target's deliveries: counts by status, due now, lag (oldest pending event), last error."""
    d = kind.table
    mine = kind.target_id == target_id
    counts = counts_by_status(session, kind, target_id)
    return DeliveryState(
        pending=counts[PENDING], delivered=counts[DELIVERED], dead=counts[DEAD],
        due=int(session.scalar(select(func.count()).select_from(d).where(
            mine, d.status == PENDING, d.next_attempt_at <= now)) or 0),
        oldest_pending_at=session.scalar(select(func.min(OutboxEvent.created_at))
                                         .join(d, d.event_id == OutboxEvent.id).where(mine, d.status == PENDING)),
        last_delivered_at=session.scalar(select(func.max(d.delivered_at)).where(mine)),
        last_error=session.scalar(select(d.last_error).where(mine, d.last_error.is_not(None))
                                  .order_by(d.last_attempt_at.desc(), d.id.desc()).limit(1)))
