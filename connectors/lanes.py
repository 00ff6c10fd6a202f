"""The dispatcher's moving parts: a :class:`Lane` per target, the :class:`Writer` that records outcomes and renews
leases; every database step rides out an outage with :class:`services.loop.Backoff` (see
:mod:`connectors.dispatch`)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Iterable, Optional

from sqlalchemy.exc import DataError, IntegrityError, ProgrammingError

from connectors import lifecycle
from connectors.lifecycle import Claimed, Counts, DeliveryKind, Outcome, RetrySchedule
from services.db import session_scope
from services.loop import Backoff
from services.schema import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pace:
    lease_s: float = 60.0  # a claim's lease, renewed every lease_s / 3 while held
    poll_s: float = 1.0  # how often an idle lane claims, and an idle dispatcher fans out
    max_backoff_s: float = 30.0  # the longest wait between tries while the database is away


class Writer:
    """Records the lanes' outcomes, a batch per transaction, and renews the leases of the deliveries held.
    After the first outcome it waits up to ``LINGER_S`` for ``BATCH`` of them: a transaction's fixed cost is
    spread over many outcomes. With ``retry`` (a running dispatcher) a failed write is kept and tried again
    after a backoff; without it (one round) the first failure is raised by :meth:`close`."""

    BATCH, LINGER_S = 500, 0.2

    def __init__(self, db_url: str, schedule: RetrySchedule, pace: Pace, kinds: Iterable[DeliveryKind],
                 retry: bool = True) -> None:
        self.db_url, self.schedule, self.pace, self.retry = db_url, schedule, pace, retry
        self.backoff = Backoff("recording delivery outcomes", pace.max_backoff_s)
        self.counts = Counts()
        self.error: Optional[BaseException] = None
        self._cond = threading.Condition()
        self._outcomes: dict[DeliveryKind, list[Outcome]] = {}
        self._count = 0  # outcomes in _outcomes
        self._given_back: dict[DeliveryKind, list[int]] = {}
        self._held: dict[DeliveryKind, set[int]] = {kind: set() for kind in kinds}
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="vlwatch-dispatch-writer", daemon=True)

    @property
    def waiting(self) -> bool:
        """Outcomes wait for the database: lanes claim nothing more until they are written."""
        return self.backoff.failing

    def hold(self, kind: DeliveryKind, ids: Iterable[int]) -> None:
        with self._cond:
            self._held[kind].update(ids)

    def put(self, kind: DeliveryKind, outcomes: list[Outcome]) -> None:
        with self._cond:
            self._outcomes.setdefault(kind, []).extend(outcomes)
            self._count += len(outcomes)
            if self._count == len(outcomes) or self._count >= self.BATCH:  # the first, or a full batch
                self._cond.notify()

    def give_back(self, kind: DeliveryKind, ids: list[int]) -> None:
        """Claimed deliveries that will not be sent here: due again now."""
        with self._cond:
            self._given_back.setdefault(kind, []).extend(ids)
            self._cond.notify()

    def start(self) -> "Writer":
        self._thread.start()
        return self

    def close(self, flush_for: float = 10.0) -> Counts:
        """Write what is left (trying for up to ``flush_for`` seconds), stop; raise a round's write error."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(flush_for + self.backoff.cap)
        if self.error is not None:
            raise self.error
        return self.counts

    def _run(self) -> None:
        renew_at = time.monotonic() + self.pace.lease_s / 3
        give_up_at = float("inf")
        while True:
            with self._cond:
                if not (self._outcomes or self._given_back or self._closing):
                    self._cond.wait(max(0.0, renew_at - time.monotonic()))
                linger_until = time.monotonic() + self.LINGER_S
                while 0 < self._count < self.BATCH and not self._closing and time.monotonic() < linger_until:
                    self._cond.wait(linger_until - time.monotonic())
                outcomes, self._outcomes, self._count = self._outcomes, {}, 0
                given_back, self._given_back = self._given_back, {}
                if self._closing and give_up_at == float("inf"):
                    give_up_at = time.monotonic() + 10.0
            try:
                self._write(outcomes, given_back, renew=time.monotonic() >= renew_at)
                if time.monotonic() >= renew_at:
                    renew_at = time.monotonic() + self.pace.lease_s / 3
                self.backoff.ok()
            except (DataError, IntegrityError, ProgrammingError) as exc:  # not an outage: retrying cannot help
                log.exception("could not record %d outcome(s); their deliveries fall due again after the lease",
                              sum(map(len, outcomes.values())))
                self._forget(outcomes)
                if not self.retry:
                    self.error = exc
                    return
            except Exception as exc:  # noqa: BLE001 - the database is away: keep everything, back off, try again
                if not self.retry:
                    self.error = exc
                    return
                with self._cond:
                    for kind, outs in outcomes.items():
                        self._outcomes[kind] = outs + self._outcomes.get(kind, [])
                        self._count += len(outs)
                    for kind, ids in given_back.items():
                        self._given_back.setdefault(kind, []).extend(ids)
                wait = self.backoff.failed(exc)
                if time.monotonic() + wait > give_up_at:
                    log.error("stopping with outcomes not recorded; those deliveries are sent again after the lease")
                    return
                time.sleep(wait)
                continue
            with self._cond:
                if self._closing and not (self._outcomes or self._given_back):
                    return

    def _write(self, outcomes: dict[DeliveryKind, list[Outcome]], given_back: dict[DeliveryKind, list[int]],
               renew: bool) -> None:
        """One transaction: record ``outcomes``, make ``given_back`` due now, renew the leases held."""
        with self._cond:
            held = {kind: set(ids) for kind, ids in self._held.items()} if renew else {}
        done = {kind: {o.claimed.id for o in outs} for kind, outs in outcomes.items()}
        held = {kind: ids - done.get(kind, set()) for kind, ids in held.items() if ids - done.get(kind, set())}
        if not (outcomes or given_back or held):
            return
        counts = Counts()
        with session_scope(self.db_url) as s:
            for kind, outs in outcomes.items():
                counts += lifecycle.record(s, kind, outs, self.schedule)
            for kind, ids in given_back.items():
                lifecycle.renew(s, kind, ids, utcnow())
            until = utcnow() + timedelta(seconds=self.pace.lease_s)
            for kind, ids in held.items():
                lifecycle.renew(s, kind, ids, until)
        self.counts += counts
        self._forget(outcomes, given_back)

    def _forget(self, outcomes: dict[DeliveryKind, list[Outcome]],
                given_back: Optional[dict[DeliveryKind, list[int]]] = None) -> None:
        with self._cond:
            for kind, outs in outcomes.items():
                self._held[kind].difference_update(o.claimed.id for o in outs)
            for kind, ids in (given_back or {}).items():
                self._held[kind].difference_update(ids)


class Lane:
    """One target's deliveries on ``threads`` threads of its own: claim up to ``batch`` due deliveries when fewer
    than ``low`` wait, deliver them ``take`` at a time, hand the outcomes to the writer. With ``once`` the lane
    claims one batch, delivers it and ends; with ``until`` too (a ``time.monotonic()`` deadline) it starts no
    send after it, and what it did not send is given back when it is joined."""

    def __init__(self, writer: Writer, kind: DeliveryKind, target_id: int, name: str,
                 deliver: Callable[[list[Claimed]], list[Outcome]], *, threads: int, take: int, batch: int,
                 low: int, once: bool = False, now: Optional[datetime] = None, until: Optional[float] = None,
                 on_exit: Callable[[], None] = lambda: None) -> None:
        self.writer, self.kind, self.target_id, self.name, self.deliver = writer, kind, target_id, name, deliver
        self.take, self.batch, self.low, self.once, self.now, self.on_exit = take, batch, low, once, now, on_exit
        self.until = until
        self.backoff = Backoff(f"claiming {kind.name} deliveries for {name!r}", writer.pace.max_backoff_s)
        self.error: Optional[BaseException] = None
        self._queue: deque[Claimed] = deque()
        self._cond = threading.Condition()
        self._claiming = self._claimed = self._stopping = False
        self._claim_at = 0.0
        self._threads = [threading.Thread(target=self._work, name=f"vlwatch-{kind.name}-{name}", daemon=True)
                         for _ in range(threads)]

    def start(self) -> "Lane":
        for t in self._threads:
            t.start()
        return self

    def poke(self) -> None:
        """New deliveries may be due: claim now."""
        with self._cond:
            self._claim_at = 0.0
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def join(self, timeout: Optional[float] = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._cond:
            unsent, self._queue = [c.id for c in self._queue], deque()
        if unsent:
            self.writer.give_back(self.kind, unsent)

    def _work(self) -> None:
        try:
            while (items := self._next()) is not None:
                if items:
                    self._deliver(items)
        finally:
            self.on_exit()

    def _next(self) -> Optional[list[Claimed]]:
        """Deliveries to send now; [] once this thread has claimed; None when the lane is done."""
        with self._cond:
            while not self._stopping and not (self.until is not None and time.monotonic() > self.until):
                if (len(self._queue) < self.low and not self._claiming and not (self.once and self._claimed)
                        and time.monotonic() >= self._claim_at and not self.writer.waiting):
                    self._claiming = True
                    break
                if self._queue:
                    return [self._queue.popleft() for _ in range(min(self.take, len(self._queue)))]
                if self.once and self._claimed and not self._claiming:
                    return None
                self._cond.wait(min(0.5, max(0.01, self._claim_at - time.monotonic())))
            else:
                return None
        self._claim()
        return []

    def _claim(self) -> None:
        claimed: list[Claimed] = []
        try:
            with session_scope(self.writer.db_url) as s:
                claimed = lifecycle.claim_due(s, self.kind, now=self.now or utcnow(), lease_s=self.writer.pace.lease_s,
                                              limit=self.batch, target_ids=[self.target_id])
            self.writer.hold(self.kind, [c.id for c in claimed])
            self.backoff.ok()
            wait = 0.0 if len(claimed) == self.batch else self.writer.pace.poll_s  # fewer than asked: none left due
        except Exception as exc:  # noqa: BLE001 - the database is away: this lane backs off (one round: raise)
            self.error = exc if self.once else None
            wait = 0.0 if self.once else self.backoff.failed(exc)
        with self._cond:
            self._claiming, self._claimed = False, True
            self._queue.extend(claimed)
            self._claim_at = time.monotonic() + wait
            self._cond.notify_all()

    def _deliver(self, items: list[Claimed]) -> None:
        try:
            outcomes = self.deliver(items)
        except Exception as exc:  # noqa: BLE001 - a fault of vlwatch, not of the target: retried on schedule
            log.exception("delivering to %s %r failed", self.kind.name, self.name)
            outcomes = [Outcome(c, f"internal error: {type(exc).__name__}: {exc}") for c in items]
        self.writer.put(self.kind, outcomes)
