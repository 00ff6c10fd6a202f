"""The outbox dispatcher: events committed with results fan out to deliveries, which are sent, retried along a
schedule with jitter, dead-lettered, and replayable.

Concurrency: on PostgreSQL, fan-out and claims use ``FOR UPDATE SKIP LOCKED``; a claimed delivery's
``next_attempt_at`` moves a lease ahead (at least ``CLAIM_SECONDS``, longer than the batch can take with every
send timing out), so two dispatchers never send it at once and a dispatcher
that dies mid-send leaves it due again later (at-least-once; receivers dedupe on ``webhook-id``).
"""

from __future__ import annotations

import functools
import logging
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping, Optional, Sequence

from sqlalchemy import Integer, Text, bindparam, cast, delete, func, select, update
from sqlalchemy.orm import Session

from connectors.webhooks import RetrySchedule, Sender, new_secret, send
from services.db import get_engine, session_scope
from services.events import event_row
from services.schema import DeliveryStatus, OutboxEvent, WebhookDelivery, WebhookSubscription, utcnow

log = logging.getLogger(__name__)

CLAIM_SECONDS = 120.0


def make_event(type_: str, data: dict[str, Any], job_id: Optional[int] = None) -> OutboxEvent:
    """A new outbox event as an ORM object (to ``session.add``)."""
    return OutboxEvent(**event_row(type_, job_id, data))


def _locking(session: Session, q):  # noqa: ANN001, ANN202
    return q.with_for_update(skip_locked=True) if session.get_bind().dialect.name == "postgresql" else q


# ---- subscriptions -----------------------------------------------------------------------------------------
def add_subscription(session: Session, name: str, url: str, event_types: Sequence[str],
                     secret: Optional[str] = None) -> WebhookSubscription:
    sub = WebhookSubscription(name=name, url=url, secret=secret or new_secret(), event_types=list(event_types),
                              active=True, created_at=utcnow())
    session.add(sub)
    session.flush()
    return sub


def upsert_subscription(session: Session, name: str, url: str, event_types: Sequence[str],
                        secret: Optional[str] = None) -> WebhookSubscription:
    sub = session.execute(select(WebhookSubscription).where(WebhookSubscription.name == name)).scalar_one_or_none()
    if sub is None:
        return add_subscription(session, name, url, event_types, secret)
    sub.url, sub.event_types, sub.active = url, list(event_types), True
    if secret:
        sub.secret = secret
    return sub


def remove_subscription(session: Session, name: str) -> bool:
    """Delete a subscription and its delivery history. Returns False when no such name exists.
    (To stop deliveries but keep history, set ``active = False`` instead.)"""
    sub = session.execute(select(WebhookSubscription).where(WebhookSubscription.name == name)).scalar_one_or_none()
    if sub is None:
        return False
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.subscription_id == sub.id))
    session.delete(sub)
    session.flush()
    return True


def list_subscriptions(session: Session) -> list[WebhookSubscription]:
    return list(session.execute(select(WebhookSubscription).order_by(WebhookSubscription.name)).scalars())


def subscription_stats(session: Session, subscription_id: int) -> dict[str, int]:
    rows = session.execute(select(WebhookDelivery.status, func.count())
                           .where(WebhookDelivery.subscription_id == subscription_id)
                           .group_by(WebhookDelivery.status)).all()
    return {s.value: 0 for s in DeliveryStatus} | dict(rows)


def pending_deliveries(session: Session) -> int:
    """Deliveries not yet final for active subscriptions (a paused one's wait for it), plus events not yet fanned
    out: zero means a drain loop is done."""
    active = select(WebhookSubscription.id).where(WebhookSubscription.active.is_(True))
    waiting = session.scalar(select(func.count()).select_from(WebhookDelivery)
                             .where(WebhookDelivery.status == DeliveryStatus.pending.value,
                                    WebhookDelivery.subscription_id.in_(active)))
    undispatched = session.scalar(select(func.count()).select_from(OutboxEvent)
                                  .where(OutboxEvent.dispatched_at.is_(None)))
    from connectors.delivery import pending_connector_deliveries

    return int(waiting or 0) + int(undispatched or 0) + pending_connector_deliveries(session)


# ---- dispatch ----------------------------------------------------------------------------------------------
def _matches(sub: WebhookSubscription, event_type: str) -> bool:
    return "*" in sub.event_types or event_type in sub.event_types


def fan_out(session: Session, limit: int = 500) -> int:
    """One delivery per active subscription matching each undispatched event. Returns deliveries created."""
    events = session.execute(_locking(session, select(OutboxEvent).where(OutboxEvent.dispatched_at.is_(None))
                                      .order_by(OutboxEvent.id).limit(limit))).scalars().all()
    if not events:
        return 0
    subs = session.execute(select(WebhookSubscription).where(WebhookSubscription.active.is_(True))).scalars().all()
    now = utcnow()
    rows = [{"event_id": ev.id, "subscription_id": sub.id, "status": DeliveryStatus.pending.value, "attempts": 0,
             "next_attempt_at": now, "created_at": now}
            for ev in events for sub in subs if _matches(sub, ev.type)]
    if rows:
        from sqlalchemy.dialects import postgresql, sqlite

        ins = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        session.execute(ins(WebhookDelivery).on_conflict_do_nothing(
            index_elements=["event_id", "subscription_id"]), rows)
    from connectors.delivery import fan_out_connectors

    made = len(rows) + fan_out_connectors(session, events, now)
    session.execute(update(OutboxEvent).where(OutboxEvent.id.in_([e.id for e in events])).values(dispatched_at=now))
    return made


@dataclass(frozen=True)
class _Claimed:
    id: int
    attempts: int
    url: str
    secret: str
    msg_id: str
    body: bytes


@functools.lru_cache(maxsize=4)
def _claim_statements(dialect: str) -> tuple[Any, ...]:
    """The claim's statements, built once (building them cost more CPU than running them): parameters ``now``,
    ``until`` (the lease's end), ``limit``; SQLite's select takes the claimed ``ids``."""
    d, sub, ev = WebhookDelivery.__table__, WebhookSubscription.__table__, OutboxEvent.__table__
    when = d.c.next_attempt_at.type
    pick = (select(d.c.id).where(d.c.status == DeliveryStatus.pending.value,
                                 d.c.next_attempt_at <= bindparam("now", type_=when),
                                 d.c.subscription_id.in_(select(sub.c.id).where(sub.c.active.is_(True))))
            .order_by(d.c.next_attempt_at, d.c.id).limit(bindparam("limit", type_=Integer)))
    claim = update(d).values(next_attempt_at=bindparam("until", type_=when))
    # the payload's JSON text as stored is the body: not parsed and serialised again
    wanted = (d.c.id, d.c.attempts, sub.c.url, sub.c.secret, ev.c.event_id, cast(ev.c.payload, Text))
    if dialect == "postgresql":
        return (claim.where(d.c.id.in_(pick.with_for_update(skip_locked=True).scalar_subquery()),
                            sub.c.id == d.c.subscription_id, ev.c.id == d.c.event_id).returning(*wanted),)
    return (claim.where(d.c.id.in_(pick.scalar_subquery())).returning(d.c.id),
            select(*wanted).join(sub, sub.c.id == d.c.subscription_id).join(ev, ev.c.id == d.c.event_id)
            .where(d.c.id.in_(bindparam("ids", expanding=True))))


def _claim_due(db_url: str, limit: int, now: datetime, lease: float = CLAIM_SECONDS) -> list[_Claimed]:
    """Claim up to ``limit`` due deliveries of active subscriptions (a paused one's are held back), oldest due
    first, and return what sending needs; the claimed rows' ``next_attempt_at`` moves to the lease's end.
    PostgreSQL: one ``UPDATE ... FROM ... RETURNING`` over a ``FOR UPDATE SKIP LOCKED`` pick. SQLite (whose
    RETURNING cannot name the FROM tables; one writer at a time): the update, then a select."""
    params = {"now": now, "until": now + timedelta(seconds=lease), "limit": limit}
    with get_engine(db_url).begin() as conn:
        stmts = _claim_statements(conn.dialect.name)
        if len(stmts) == 1:
            rows = conn.execute(stmts[0], params).all()
        else:
            ids = conn.execute(stmts[0], params).scalars().all()
            rows = conn.execute(stmts[1], {"ids": ids}).all() if ids else []
    return [_Claimed(i, a, url, sec, mid, body.encode()) for i, a, url, sec, mid, body in sorted(rows)]


@dataclass
class DispatchCounts:
    fanned_out: int = 0
    sent: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """Loading the CA bundle costs ~20 ms: once per process, not once per dispatch round."""
    return ssl.create_default_context()


@functools.lru_cache(maxsize=4)
def _sender(concurrency: int) -> tuple[Sender, ThreadPoolExecutor]:
    """The HTTP sender (its keep-alive connections) and the sending threads, made once per process and used by
    every round: a new httpx client per round cost ~30 ms of CPU and new connections to every subscriber."""
    return (Sender(_tls_context(), max_idle=concurrency),
            ThreadPoolExecutor(concurrency, thread_name_prefix="vlwatch-webhooks"))


def deliver_due(db_url: str, schedule: RetrySchedule, timeout: float, limit: int = 200,
                now: Optional[datetime] = None, concurrency: int = 8) -> DispatchCounts:
    """Send every due delivery once (concurrently), then record each outcome."""
    counts = DispatchCounts()
    # The lease covers the whole batch even if every send runs into its timeout (the timeout applies per phase,
    # hence the factor 2), so no other dispatcher claims a delivery that is still being sent.
    concurrency = max(1, concurrency)
    rounds = -(-limit // concurrency)
    lease = max(CLAIM_SECONDS, 2 * rounds * timeout + 30.0)
    claimed = _claim_due(db_url, limit, now or utcnow(), lease)
    if not claimed:
        return counts

    client, pool = _sender(concurrency)

    def attempt(c: _Claimed):  # noqa: ANN202
        return c, send(client, c.url, c.msg_id, c.body, c.secret, timeout)

    results = [attempt(claimed[0])] if len(claimed) == 1 else list(pool.map(attempt, claimed))
    done = utcnow()
    delivered: dict[int, list[int]] = {}  # status code -> delivery ids
    others: list[dict[str, Any]] = []
    for c, a in results:
        if a.ok:
            delivered.setdefault(a.status_code, []).append(c.id)
            counts.delivered += 1
            continue
        values: dict[str, Any] = {"_id": c.id, "attempts": c.attempts + 1, "last_attempt_at": done,
                                  "last_status_code": a.status_code, "last_error": a.error,
                                  "status": DeliveryStatus.pending.value}
        delay = schedule.next_delay(c.attempts + 1)
        if delay is None:
            values.update(status=DeliveryStatus.dead.value, next_attempt_at=None)
            counts.dead += 1
            log.warning("webhook delivery %s dead after %d attempts: %s", c.id, c.attempts + 1, a.error)
        else:
            values.update(next_attempt_at=done + timedelta(seconds=delay))
            counts.retrying += 1
        others.append(values)
    ok_stmt, other_stmt = _outcome_statements()
    with get_engine(db_url).begin() as conn:  # a statement per status code, one executemany for the rest
        for code, ids in delivered.items():
            conn.execute(ok_stmt, {"ids": ids, "code": code, "done": done})
        if others:
            conn.execute(other_stmt, others)
    counts.sent = len(results)
    return counts


@functools.lru_cache(maxsize=1)
def _outcome_statements() -> tuple[Any, Any]:
    """Built once: delivered (``ids``, ``code``, ``done``), and any other outcome by id (an executemany)."""
    d = WebhookDelivery.__table__
    when = d.c.last_attempt_at.type
    ok = update(d).where(d.c.id.in_(bindparam("ids", expanding=True))).values(
        status=DeliveryStatus.delivered.value, attempts=d.c.attempts + 1, last_attempt_at=bindparam("done", type_=when),
        last_status_code=bindparam("code", type_=Integer), last_error=None, delivered_at=bindparam("done", type_=when),
        next_attempt_at=None)
    other = update(d).where(d.c.id == bindparam("_id")).values(
        {k: bindparam(k) for k in ("attempts", "last_attempt_at", "last_status_code", "last_error", "status",
                                   "next_attempt_at")})
    return ok, other


def dispatch_once(db_url: str, schedule: Iterable[float] | RetrySchedule, timeout: float,
                  now: Optional[datetime] = None, connectors: Optional[Mapping[str, Any]] = None) -> DispatchCounts:
    """One round: fan out new events, send due webhook deliveries, apply due connector deliveries of
    ``connectors`` (name -> connector; see connectors.delivery). Connector outcomes are added to the counts."""
    sched = schedule if isinstance(schedule, RetrySchedule) else RetrySchedule(tuple(schedule))
    with session_scope(db_url) as s:
        fanned = fan_out(s)
    counts = deliver_due(db_url, sched, timeout, now=now)
    counts.fanned_out = fanned
    if connectors:
        from connectors.delivery import deliver_connectors_due

        c = deliver_connectors_due(db_url, connectors, sched, now=now)
        counts.sent += c.sent
        counts.delivered += c.delivered
        counts.retrying += c.retrying
        counts.dead += c.dead
    return counts


def run_dispatcher(db_url: str, schedule: Iterable[float] | RetrySchedule, timeout: float, stop: threading.Event,
                   poll_interval: float = 1.0, connectors: Optional[Mapping[str, Any]] = None) -> None:
    """Dispatch until ``stop`` is set; busy rounds follow each other without waiting."""
    while not stop.is_set():
        counts = dispatch_once(db_url, schedule, timeout, connectors=connectors)
        if counts.sent == 0 and counts.fanned_out == 0:
            stop.wait(poll_interval)


def replay(session: Session, *, subscription: Optional[str] = None, event_ids: Optional[Sequence[str]] = None,
           status: Sequence[str] = (DeliveryStatus.dead.value,), since: Optional[datetime] = None) -> int:
    """Make matching deliveries pending again, due now. Attempts are kept (history); the webhook-id is the
    event's, so receivers that already saw it dedupe. Returns how many were reset."""
    q = select(WebhookDelivery.id).join(OutboxEvent, OutboxEvent.id == WebhookDelivery.event_id) \
        .where(WebhookDelivery.status.in_(list(status)))
    if subscription is not None:
        q = q.join(WebhookSubscription, WebhookSubscription.id == WebhookDelivery.subscription_id) \
            .where(WebhookSubscription.name == subscription)
    if event_ids:
        q = q.where(OutboxEvent.event_id.in_(list(event_ids)))
    if since is not None:
        q = q.where(OutboxEvent.created_at >= since)
    ids = session.execute(q).scalars().all()
    if ids:
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_(ids)).values(
            status=DeliveryStatus.pending.value, next_attempt_at=utcnow()))
    return len(ids)
