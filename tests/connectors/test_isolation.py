"""Delivery isolated per target, leases a dispatcher keeps while alive and loses within the lease when killed, and
the reconciler beside a hung receiver — on PostgreSQL with real HTTP receivers and a real `vlwatch dispatch`."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import func, select

from connectors.dispatch import Dispatcher, pending_deliveries
from connectors.webhooks import add_subscription
from services.cli.receiver import WebhookReceiver
from services.db import session_scope
from services.schema import Image, Job, WebhookDelivery, WebhookSubscription, utcnow
from tests.connectors.outbox import emit_n, loopback_sender, watching_dispatcher
from tests.waiting import wait_for

pytestmark = pytest.mark.services


class SlowReceiver:
    """Answers 204 after ``delay`` seconds, or holds every request while ``hold`` is set (a hung receiver)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.hold = threading.Event()
        self.released = threading.Event()
        self.hits: list[str] = []
        self.in_flight = 0
        rx = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                rx.in_flight += 1
                if rx.hold.is_set():
                    rx.released.wait(60)
                time.sleep(rx.delay)
                rx.in_flight -= 1
                rx.hits.append(self.headers["webhook-id"])
                try:
                    self.send_response(204)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender is gone

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hung() -> Iterator[SlowReceiver]:
    rx = SlowReceiver()
    rx.hold.set()
    yield rx
    rx.close()


def delivered(db_url: str, name: str) -> int:
    with session_scope(db_url) as s:
        return int(s.scalar(select(func.count()).select_from(WebhookDelivery).join(WebhookSubscription)
                            .where(WebhookSubscription.name == name, WebhookDelivery.status == "delivered")) or 0)


def test_a_hung_receiver_delays_only_its_own_deliveries(db_url: str, hung: SlowReceiver):
    with WebhookReceiver() as fast, loopback_sender() as sender:
        with session_scope(db_url) as s:
            add_subscription(s, "hung", hung.url, ["*"])
            add_subscription(s, "fast", fast.url, ["*"], fast.secret)
        stop = threading.Event()
        d = Dispatcher(db_url, (60.0,), sender, timeout=30.0, per_target=4, poll_s=0.1)
        t = threading.Thread(target=d.run, args=(stop,))
        t.start()
        try:
            emit_n(db_url, 10)
            wait_for(lambda: hung.in_flight == 4 and delivered(db_url, "fast") == 10, 20,
                     "the hung receiver to hold four requests while the fast one gets ten")
            later = emit_n(db_url, 20)
            t0 = time.monotonic()
            wait_for(lambda: delivered(db_url, "fast") == 30, 10, "the fast receiver's deliveries")
            assert time.monotonic() - t0 < 10  # not behind the hung receiver's 30 s attempts
            assert set(later) <= {e["webhook_id"] for e in fast.events()}
            assert hung.in_flight == 4 and delivered(db_url, "hung") == 0
            hung.released.set()
            wait_for(lambda: delivered(db_url, "hung") == 30, 20, "the hung receiver's deliveries once it answers")
        finally:
            hung.released.set()
            stop.set()
            t.join(40)
        assert not t.is_alive()


def test_one_round_beside_a_hung_receiver_ends_after_twice_the_timeout(db_url: str, hung: SlowReceiver):
    with WebhookReceiver() as fast, loopback_sender() as sender:
        with session_scope(db_url) as s:
            add_subscription(s, "hung", hung.url, ["*"])
            add_subscription(s, "fast", fast.url, ["*"], fast.secret)
        emit_n(db_url, 20)
        t = time.monotonic()
        counts = Dispatcher(db_url, (60.0,), sender, timeout=1.0, per_target=4).once()
        took = time.monotonic() - t
    assert took < 3 * 1.0 + 3  # no send starts after 2 s; those running end within their 1 s
    assert counts.delivered == 20 and delivered(db_url, "fast") == 20
    with session_scope(db_url) as s:
        rows = s.execute(select(WebhookDelivery.attempts, WebhookDelivery.next_attempt_at <= utcnow())
                         .join(WebhookSubscription).where(WebhookSubscription.name == "hung")).all()
    tried = [due for attempts, due in rows if attempts == 1]
    given_back = [due for attempts, due in rows if attempts == 0]
    assert len(tried) == counts.retrying and 4 <= len(tried) < 20 and not any(tried)  # timed out: retry later
    assert len(given_back) == 20 - len(tried) and all(given_back)  # never sent: due again at once


def test_a_live_dispatcher_keeps_the_leases_of_what_it_holds(db_url: str):
    """Each delivery takes 1.5 s and the lease is 2 s: without renewal a second dispatcher would claim what the
    first one still holds and the receiver would see duplicates."""
    slow = SlowReceiver(delay=1.5)
    with session_scope(db_url) as s:
        add_subscription(s, "slow", slow.url, ["*"])
    ids = emit_n(db_url, 4)
    stop = threading.Event()
    with loopback_sender() as a, loopback_sender() as b:
        runs = [threading.Thread(target=Dispatcher(db_url, (60.0,), sender, timeout=10.0, per_target=1,
                                                   lease_s=2.0, poll_s=0.1).run, args=(stop,))
                for sender in (a, b)]
        for t in runs:
            t.start()
        try:
            wait_for(lambda: delivered(db_url, "slow") == 4, 30, "four slow deliveries")
        finally:
            stop.set()
            for t in runs:
                t.join(20)
            slow.close()
    assert sorted(slow.hits) == sorted(ids)  # each exactly once


def test_a_killed_dispatchers_claims_come_back_within_the_lease_and_reconciling_never_waits(
        db_url: str, hung: SlowReceiver, tmp_path: Path):
    with session_scope(db_url) as s:
        add_subscription(s, "hung", hung.url, ["*"])
        image = Image(bucket="b", key="k.png", etag="e", size=1)
        s.add(image)
        s.flush()
        stuck = Job(image_id=image.id, profile="default", queue="cpu", status="running", attempts=1,
                    lease_owner="lost-worker", lease_expires_at=utcnow())
        s.add(stuck)
    ids = emit_n(db_url, 12)
    with watching_dispatcher(db_url, tmp_path, delivery_lease_seconds="3", webhook_timeout_seconds="60",
                             reconcile_interval_seconds="1", dispatch_interval_seconds="0.2") as (proc, log):
        wait_for(lambda: hung.in_flight == 4 or proc.poll() is not None, 60, "the dispatcher to hang on the receiver")
        assert proc.poll() is None, log.read_text()
        t_hung = time.monotonic()

        def reclaimed() -> bool:
            with session_scope(db_url) as s:
                job = s.get(Job, stuck.id)
                return job.status == "queued" and job.sent_at is not None

        wait_for(reclaimed, 15, "the reconciler to re-send the stuck job while deliveries hang")
        assert time.monotonic() - t_hung < 15
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        t_kill = time.monotonic()
    hung.released.set()
    hung.hold.clear()

    def due_again() -> bool:
        with session_scope(db_url) as s:
            return s.scalar(select(func.count()).select_from(WebhookDelivery).where(
                WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= utcnow())) == 12

    wait_for(due_again, 10, "the killed dispatcher's claims to fall due")
    assert time.monotonic() - t_kill < 3 + 5  # the lease, and slack for a loaded machine
    with loopback_sender() as sender:
        d = Dispatcher(db_url, (60.0,), sender, timeout=10.0)
        wait_for(lambda: d.once().sent == 0 and delivered(db_url, "hung") == 12, 30, "the deliveries")
    assert Counter(hung.hits)[ids[0]] >= 1 and set(hung.hits) == set(ids)
    with session_scope(db_url) as s:
        assert pending_deliveries(s) == 0
