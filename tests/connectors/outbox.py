"""Outbox events for the delivery tests: emit them as the workers' commit does, and dispatch until none is left."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from connectors.dispatch import dispatch_once, pending_deliveries
from connectors.lifecycle import Counts, RetrySchedule
from connectors.outbound import OutboundGuard
from connectors.webhooks import WebhookSender
from services.db import session_scope
from services.events import event_row
from services.schema import OutboxEvent
from tests.waiting import wait_for

LOOPBACK = OutboundGuard.allowing(["127.0.0.0/8"])
"""The tests' receivers listen on loopback, which outbound connections reach only when allowed."""


def loopback_sender() -> WebhookSender:
    return WebhookSender(LOOPBACK)


def dispatch_round(db_url: str, schedule: RetrySchedule, **kw: Any) -> Counts:
    """One dispatcher round (``dispatch_once``) whose webhooks may reach the tests' loopback receivers."""
    with loopback_sender() as sender:
        return dispatch_once(db_url, schedule, timeout=5, sender=sender, **kw)


def emit(db_url: str, items: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """One outbox event per ``(type, data)``; returns their event ids (the webhook-ids)."""
    with session_scope(db_url) as s:
        events = [OutboxEvent(**event_row(type_, None, data)) for type_, data in items]
        s.add_all(events)
    return [e.event_id for e in events]


def emit_n(db_url: str, n: int, type_: str = "job.succeeded") -> list[str]:
    return emit(db_url, [(type_, {"n": i}) for i in range(n)])


def drain(db_url: str, schedule: RetrySchedule, connectors: Optional[Mapping[str, Any]] = None,
          timeout: float = 30.0) -> None:
    """Dispatch rounds until no delivery is pending; fail after ``timeout`` seconds."""
    with loopback_sender() as sender:
        def done() -> bool:
            dispatch_once(db_url, schedule, timeout=5, connectors=connectors, sender=sender)
            with session_scope(db_url) as s:
                return pending_deliveries(s) == 0

        wait_for(done, timeout, "deliveries still pending", poll=0)


def in_threads(n: int, work: Callable[[], None]) -> None:
    """Run ``work`` in ``n`` threads at once; re-raise the first error any of them met."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@contextmanager
def watching_dispatcher(db_url: str, folder: Path, **settings: str) -> Iterator[tuple[subprocess.Popen, Path]]:
    """`vlwatch dispatch --watch` as a process of its own on ``db_url`` (loopback receivers allowed, ``settings``
    as ``VLWATCH_*`` variables, e.g. ``delivery_lease_seconds="3"``); yields the process and its log file."""
    env = {**os.environ, "VLWATCH_DATABASE_URL": db_url, "VLWATCH_OUTBOUND_ALLOW": "127.0.0.0/8",
           "VLWATCH_DATA_DIR": str(folder), **{f"VLWATCH_{k.upper()}": v for k, v in settings.items()}}
    env.pop("VLWATCH_CONFIG", None)
    log = folder / "dispatch.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services", "dispatch", "--watch"],
                                cwd=Path(__file__).resolve().parents[2], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(30)
