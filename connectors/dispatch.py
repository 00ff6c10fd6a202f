"""The dispatcher (``vlwatch dispatch``): outbox events fanned out to deliveries, and each target's deliveries sent
on a lane of its own, through the one delivery lifecycle (:mod:`connectors.lifecycle`)::

    scheduler (the calling thread)   fan-out; a lane per active target; new deliveries wake the lanes
    lane, one per target             threads of its own: claim the target's due deliveries, deliver, hand on
    writer (a thread)                record outcomes in batches; renew the leases of the deliveries held

Isolation: a webhook subscription's lane has ``per_target`` threads, each sending one delivery at a time; a
connector's lane applies batches on one thread. A receiver that is slow or hangs (an attempt ends after
``timeout`` seconds) holds only its own lane; every other target, the fan-out and the recording go on.

Overlap: a lane claims its next batch while its other threads still send, and the writer records while lanes
send. Signers are made once per subscription, connections kept alive per lane thread.

Leases: a claim leases its rows for ``lease_s`` (a minute by default) and the writer renews, every ``lease_s / 3``,
the lease of everything this process holds (claimed, not yet recorded): a dispatcher that dies releases its
deliveries within ``lease_s``; a live one keeps them however slow their target. A stopping one gives back what it
claimed and did not send.

Outages: every database step that fails (fan-out, claim, record, renew) is logged and tried again after a backoff
that doubles up to ``max_backoff_s``; outcomes not yet recorded stay in memory until the database is back, and
lanes claim nothing while outcomes wait. Only ``stop`` ends :meth:`Dispatcher.run`.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any, Iterable, Mapping, Optional

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from connectors import lifecycle
from connectors.databases import CONNECTORS, apply_batch
from connectors.lanes import Lane, Pace, Writer
from connectors.lifecycle import Claimed, Counts, DeliveryKind, Outcome, RetrySchedule
from connectors.targets import Connector
from connectors.webhooks import WEBHOOKS, WebhookSender
from services.db import session_scope
from services.loop import Backoff
from services.schema import OutboxEvent

KINDS = (WEBHOOKS, CONNECTORS)
FAN_OUT_LIMIT = 1000  # events per fan-out transaction
CONNECTOR_BATCH = 500  # deliveries a connector applies in one transaction of its target
WEBHOOK_BATCH = 500  # deliveries a subscription's lane claims at once (a claim's cost is mostly per claim)


def fan_out(session: Session, limit: int = FAN_OUT_LIMIT) -> int:
    """Deliveries for up to ``limit`` undispatched events, to every active subscription and connector they
    match. Returns deliveries made."""
    return lifecycle.fan_out(session, KINDS, limit)


def pending_deliveries(session: Session) -> int:
    """Deliveries not yet final for active targets (a paused one's wait for it), plus events not yet fanned
    out: zero means a drain loop is done."""
    undispatched = session.scalar(select(func.count()).select_from(OutboxEvent)
                                  .where(OutboxEvent.dispatched_at.is_(None)))
    return int(undispatched or 0) + sum(lifecycle.pending(session, kind) for kind in KINDS)


class Dispatcher:
    """Delivers to every active webhook subscription and to ``connectors`` (name -> connector) of this process;
    ``sender`` (kept and closed by the caller) sends the webhooks."""

    def __init__(self, db_url: str, schedule: Iterable[float] | RetrySchedule, sender: WebhookSender,
                 connectors: Optional[Mapping[str, Connector]] = None, *, timeout: float = 10.0,
                 per_target: int = 4, lease_s: float = 60.0, poll_s: float = 1.0, max_backoff_s: float = 30.0
                 ) -> None:
        self.db_url, self.sender, self.connectors = db_url, sender, dict(connectors or {})
        self.schedule = schedule if isinstance(schedule, RetrySchedule) else RetrySchedule(tuple(schedule))
        self.timeout, self.per_target = timeout, max(1, per_target)
        self.pace = Pace(lease_s, poll_s, max_backoff_s)
        self.writer = self._writer()  # run() and once() make their own

    def run(self, stop: threading.Event) -> None:
        """Fan out and deliver until ``stop`` is set, riding out database outages."""
        lanes: dict[tuple[str, int], Lane] = {}
        backoff = Backoff("fanning out outbox events", self.pace.max_backoff_s)
        self.writer = self._writer().start()
        try:
            while not stop.is_set():
                try:
                    with session_scope(self.db_url) as s:
                        made = fan_out(s)
                    self._follow_targets(lanes)
                    backoff.ok()
                except Exception as exc:  # noqa: BLE001 - the database is away: log, back off, try again
                    stop.wait(backoff.failed(exc))
                    continue
                if made:
                    for lane in lanes.values():
                        lane.poke()
                stop.wait(0 if made else self.pace.poll_s)
        finally:
            for lane in lanes.values():
                lane.stop()
            deadline = time.monotonic() + self.timeout + 1.0  # every send in flight ends by then
            for lane in lanes.values():
                lane.join(max(0.0, deadline - time.monotonic()))
            self.writer.close()

    def once(self, now: Optional[datetime] = None) -> Counts:
        """One round: fan out, claim one batch per target (due at ``now``), deliver, record; errors raise. A
        round starts no send after twice the attempt timeout: a hung receiver's claimed deliveries that wait past
        that are given back, due at once, for the next round."""
        with session_scope(self.db_url) as s:
            fanned = fan_out(s)
        self.writer = self._writer(retry=False).start()
        until = time.monotonic() + 2 * self.timeout
        lanes = [self._lane(kind, target_id, name, once=True, now=now, until=until).start()
                 for kind, target_id, name in self._targets()]
        for lane in lanes:
            lane.join()
        counts = self.writer.close()
        for lane in lanes:
            if lane.error is not None:
                raise lane.error
        counts.fanned_out += fanned
        return counts

    def _writer(self, retry: bool = True) -> Writer:
        return Writer(self.db_url, self.schedule, self.pace, KINDS, retry=retry)

    def _targets(self) -> list[tuple[DeliveryKind, int, str]]:
        """Active subscriptions, and the active connectors this process runs: (kind, id, name)."""
        found: list[tuple[DeliveryKind, int, str]] = []
        with session_scope(self.db_url) as s:
            for kind in KINDS:
                q = select(kind.targets.id, kind.targets.name).where(kind.targets.active.is_(True))
                if kind is CONNECTORS:
                    if not self.connectors:
                        continue
                    q = q.where(kind.targets.name.in_(list(self.connectors)))
                found += [(kind, target_id, name) for target_id, name in s.execute(q)]
        return found

    def _follow_targets(self, lanes: dict[tuple[str, int], Lane]) -> None:
        """A lane for each active target; the lanes of targets paused or gone are stopped."""
        current = {(kind.name, target_id): (kind, name) for kind, target_id, name in self._targets()}
        for key in [k for k in lanes if k not in current]:
            lane = lanes.pop(key)
            lane.stop()
            threading.Thread(target=lane.join, daemon=True).start()  # its sends end within the timeout
        for key, (kind, name) in current.items():
            if key not in lanes:
                lanes[key] = self._lane(kind, key[1], name).start()

    def _lane(self, kind: DeliveryKind, target_id: int, name: str, once: bool = False,
              now: Optional[datetime] = None, until: Optional[float] = None) -> Lane:
        if kind is CONNECTORS:
            connector = self.connectors[name]
            return Lane(self.writer, kind, target_id, name, lambda items: apply_batch(connector, items), threads=1,
                        take=CONNECTOR_BATCH, batch=CONNECTOR_BATCH, low=1, once=once, now=now, until=until)
        c = self.per_target
        return Lane(self.writer, kind, target_id, name, self._send, threads=c, take=1, batch=WEBHOOK_BATCH,
                    low=16 * c, once=once, now=now, until=until, on_exit=self.sender.close_thread)

    def _send(self, items: list[Claimed]) -> list[Outcome]:
        return [self.sender.deliver(c, self.timeout) for c in items]


def dispatch_once(db_url: str, schedule: Iterable[float] | RetrySchedule, timeout: float,
                  now: Optional[datetime] = None, connectors: Optional[Mapping[str, Connector]] = None,
                  sender: Optional[WebhookSender] = None, **options: Any) -> Counts:
    """One round (:meth:`Dispatcher.once`) with ``sender``, or a sender of its own that refuses every address
    that is not public."""
    if sender is not None:
        return Dispatcher(db_url, schedule, sender, connectors, timeout=timeout, **options).once(now)
    with WebhookSender() as own:
        return Dispatcher(db_url, schedule, own, connectors, timeout=timeout, **options).once(now)
