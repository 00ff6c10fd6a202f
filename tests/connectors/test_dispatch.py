"""More dispatcher behaviour: default schedule and jitter bounds, the event envelope, one HTTP attempt, SQLite,
replay filters, concurrent fan-out on PostgreSQL, subscription removal, a receiver outage window."""

from __future__ import annotations

import random
import threading
import time

import pytest
from sqlalchemy import func, select

from connectors.dispatch import Dispatcher, fan_out, pending_deliveries
from connectors.lifecycle import DEFAULT_DELAYS, RetrySchedule
from connectors.webhooks import (
    Attempt, add_subscription, list_subscriptions, remove_subscription, replay,
)
from services.cli.receiver import WebhookReceiver
from services.db import session_scope
from services.events import event_row
from services.schema import OutboxEvent, WebhookDelivery, utcnow
from tests.connectors.outbox import dispatch_round, drain, emit_n, in_threads, loopback_sender
from tests.waiting import wait_for


def test_default_schedule_is_svix_like_and_jitter_stays_in_bounds():
    sched = RetrySchedule(rand=random.Random(7).random)
    assert tuple(sched.delays) == DEFAULT_DELAYS == (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
    for attempt, base in enumerate(DEFAULT_DELAYS, start=1):
        draws = [sched.next_delay(attempt) for _ in range(200)]
        assert all(base * 0.8 <= d <= base * 1.2 for d in draws)
        assert max(draws) - min(draws) > base * 0.2  # jitter actually spreads the retries
    assert sched.next_delay(len(DEFAULT_DELAYS) + 1) is None
    assert sched.next_delay(0) is None


def test_event_row_envelope():
    ev = event_row("job.failed", None, {"job_id": 3, "reason": "bad image"})
    assert ev["event_id"].startswith("msg_") and len(ev["event_id"]) == 4 + 32
    assert ev["payload"]["type"] == "job.failed" and ev["payload"]["data"] == {"job_id": 3, "reason": "bad image"}
    assert ev["payload"]["timestamp"].endswith("Z")
    assert event_row("job.failed", None, {})["event_id"] != ev["event_id"]


def test_send_reports_status_and_connection_errors():
    with WebhookReceiver() as rx, loopback_sender() as sender:
        assert sender.send(rx.url, "msg_1", b'{"a":1}', rx.secret, 5) == Attempt(204, None)
        rx.fail_next(1)
        failed = sender.send(rx.url, "msg_2", b'{"a":1}', rx.secret, 5)
        assert failed.status_code == 500 and failed.error is not None and failed.error.startswith("HTTP 500")
        assert [e["webhook_id"] for e in rx.events()] == ["msg_1"]
        dead_url = rx.url
    with loopback_sender() as sender:  # receiver closed: connection refused
        refused = sender.send(dead_url, "msg_3", b"{}", rx.secret, 2)
    assert refused.status_code is None and refused.error and "Connect" in refused.error


def test_sqlite_fan_out_deliver_dead_letter_and_replay(sqlite_url):
    with WebhookReceiver() as rx:
        with session_scope(sqlite_url) as s:
            add_subscription(s, "rx", rx.url, ["job.succeeded"], rx.secret)
        ids = emit_n(sqlite_url, 3)
        emit_n(sqlite_url, 1, "job.failed")  # no subscriber for this type
        rx.fail_next(1000)
        sched = RetrySchedule((0.0,), jitter=0.0)
        drain(sqlite_url, sched)
        with session_scope(sqlite_url) as s:
            rows = s.execute(select(WebhookDelivery)).scalars().all()
            assert sorted((r.status, r.attempts) for r in rows) == [("dead", 2)] * 3
            assert fan_out(s) == 0
        rx.fail_next(0)
        with session_scope(sqlite_url) as s:
            assert replay(s) == 3
        drain(sqlite_url, sched)
        assert sorted(rx.hits) == sorted(ids)
        with session_scope(sqlite_url) as s:
            assert {r.status for r in s.execute(select(WebhookDelivery)).scalars()} == {"delivered"}


@pytest.mark.services
def test_replay_filters_by_event_ids_status_and_since(db_url):
    with WebhookReceiver() as rx:
        with session_scope(db_url) as s:
            add_subscription(s, "a", rx.url, ["*"], rx.secret)
            add_subscription(s, "b", rx.url, ["*"], rx.secret)
        ids = emit_n(db_url, 3)
        drain(db_url, RetrySchedule((0.0,), jitter=0.0))
        assert len(rx.hits) == 6  # two subscriptions, same webhook-id each: the receiver sees duplicates
        assert sorted({e["webhook_id"] for e in rx.events()}) == sorted(ids)
        with session_scope(db_url) as s:
            assert replay(s) == 0  # nothing dead
            assert replay(s, event_ids=[ids[0]], status=("delivered",), subscription="a") == 1
            assert replay(s, since=utcnow(), status=("delivered",)) == 0
        drain(db_url, RetrySchedule((0.0,), jitter=0.0))
        assert rx.hits.count(ids[0]) == 3 and len(rx.hits) == 7
        with session_scope(db_url) as s:
            attempts = sorted(s.execute(select(WebhookDelivery.attempts)).scalars())
        assert attempts == [1, 1, 1, 1, 1, 2]  # replay keeps the attempt history


@pytest.mark.services
def test_concurrent_fan_out_creates_each_delivery_once(db_url):
    with session_scope(db_url) as s:
        add_subscription(s, "x", "http://127.0.0.1:9/x", ["*"])
        add_subscription(s, "y", "http://127.0.0.1:9/y", ["job.succeeded"])
    emit_n(db_url, 150)
    created: list[int] = []

    def run() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with session_scope(db_url) as s:
                created.append(fan_out(s, limit=20))
                left = s.scalar(select(func.count()).select_from(OutboxEvent)
                                .where(OutboxEvent.dispatched_at.is_(None)))
            if not left:
                return

    in_threads(3, run)
    assert sum(created) == 300
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(WebhookDelivery)) == 300


@pytest.mark.services
def test_outage_window_then_recovery_and_inactive_subscription(db_url):
    with WebhookReceiver() as rx:
        with session_scope(db_url) as s:
            add_subscription(s, "rx", rx.url, ["*"], rx.secret)
            add_subscription(s, "gone", rx.url, ["*"], rx.secret)
            assert [x.name for x in list_subscriptions(s)] == ["gone", "rx"]
        with session_scope(db_url) as s:
            assert remove_subscription(s, "gone") and not remove_subscription(s, "gone")
        ids = emit_n(db_url, 4)
        rx.fail_for(1.5)  # the first attempts fall inside the window even on a loaded machine
        drain(db_url, RetrySchedule((0.05,) * 200, jitter=0.5))
        assert sorted(e["webhook_id"] for e in rx.events()) == sorted(ids)
        with session_scope(db_url) as s:
            rows = s.execute(select(WebhookDelivery)).scalars().all()
        assert len(rows) == 4 and all(r.attempts >= 2 and r.last_status_code == 204 for r in rows)


@pytest.mark.services
def test_run_dispatcher_loop_delivers_until_stopped(db_url):
    with WebhookReceiver() as rx:
        with session_scope(db_url) as s:
            add_subscription(s, "rx", rx.url, ["*"], rx.secret)
        stop = threading.Event()
        sender = loopback_sender()
        d = Dispatcher(db_url, (0.0,), sender, timeout=5.0, poll_s=0.05)
        t = threading.Thread(target=d.run, args=(stop,))
        t.start()
        try:
            ids = emit_n(db_url, 5)  # emitted while the loop runs: picked up on a later poll
            wait_for(lambda: len(rx.events()) >= 5, 20, "the loop to deliver five events")
        finally:
            stop.set()
            t.join(10)
            sender.close()
        assert not t.is_alive()
        assert sorted(rx.hits) == sorted(ids)


@pytest.mark.services
def test_paused_subscription_holds_its_deliveries_until_resumed(db_url):
    from services.schema import WebhookSubscription

    with WebhookReceiver() as rx:
        with session_scope(db_url) as s:
            add_subscription(s, "rx", rx.url, ["*"], rx.secret)
        ids = emit_n(db_url, 2)
        with session_scope(db_url) as s:
            assert fan_out(s) == 2
            s.execute(select(WebhookSubscription)).scalar_one().active = False
        counts = dispatch_round(db_url, RetrySchedule((0.0,), jitter=0.0))
        assert counts.sent == 0 and rx.hits == []
        with session_scope(db_url) as s:
            assert pending_deliveries(s) == 0  # a drain loop does not wait on a paused subscription
        with session_scope(db_url) as s:
            s.execute(select(WebhookSubscription)).scalar_one().active = True
        drain(db_url, RetrySchedule((0.0,), jitter=0.0))
        assert sorted(rx.hits) == sorted(ids)


def test_signature_header_is_hmac_sha256_of_id_timestamp_body():
    import base64
    import hashlib
    import hmac
    from datetime import datetime, timezone

    from connectors.webhooks import new_secret, signed_headers

    secret = new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 24
    body = b'{"type":"job.succeeded","data":{}}'
    h = signed_headers(secret, "msg_1", body, now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    assert h["webhook-id"] == "msg_1" and h["webhook-timestamp"] == "1767323045"
    mac = hmac.new(base64.b64decode(secret[6:]), b"msg_1.1767323045." + body, hashlib.sha256).digest()
    assert h["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


def test_a_redirect_is_a_failed_attempt_and_url_credentials_become_basic_auth():
    import base64
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[tuple[str, str]] = []  # (path, authorization) of every request

    class Redirecting(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", 0)))
            seen.append((self.path, self.headers.get("authorization", "")))
            self.send_response(302)
            self.send_header("location", "/elsewhere")
            self.send_header("content-length", "5")
            self.end_headers()
            self.wfile.write(b"moved")

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with loopback_sender() as sender:
            a = sender.send(f"http://hook%20user:p%40ss@127.0.0.1:{server.server_address[1]}/in", "msg_1", b"{}",
                            "whsec_" + base64.b64encode(b"k" * 24).decode(), 5)
    finally:
        server.shutdown()
        server.server_close()
    assert a.status_code == 302 and a.error == "HTTP 302: moved"
    assert seen == [("/in", "Basic " + base64.b64encode(b"hook user:p@ss").decode())]  # not followed
