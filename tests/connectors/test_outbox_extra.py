"""More dispatcher behaviour: default schedule and jitter bounds, SQLite, replay filters, concurrent fan-out on
PostgreSQL, subscription removal, a receiver outage window."""

from __future__ import annotations

import random
import threading
import time

import pytest
from sqlalchemy import func, select

from connectors.outbox import (
    add_subscription, dispatch_once, fan_out, list_subscriptions, make_event, pending_deliveries,
    remove_subscription, replay,
)
from connectors.receiver import WebhookReceiver
from connectors.webhooks import DEFAULT_DELAYS, RetrySchedule, send_once
from services.db import session_scope
from services.schema import OutboxEvent, WebhookDelivery, utcnow


def _emit(url: str, n: int, type_: str = "job.succeeded") -> list[str]:
    with session_scope(url) as s:
        evs = [make_event(type_, {"n": i}) for i in range(n)]
        s.add_all(evs)
    return [e.event_id for e in evs]


def _drain(url: str, schedule: RetrySchedule, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        dispatch_once(url, schedule, timeout=5)
        with session_scope(url) as s:
            if pending_deliveries(s) == 0:
                return
    raise AssertionError("deliveries still pending")


def test_default_schedule_is_svix_like_and_jitter_stays_in_bounds():
    sched = RetrySchedule(rand=random.Random(7).random)
    assert tuple(sched.delays) == DEFAULT_DELAYS == (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
    for attempt, base in enumerate(DEFAULT_DELAYS, start=1):
        draws = [sched.next_delay(attempt) for _ in range(200)]
        assert all(base * 0.8 <= d <= base * 1.2 for d in draws)
        assert max(draws) - min(draws) > base * 0.2  # jitter actually spreads the retries
    assert sched.next_delay(len(DEFAULT_DELAYS) + 1) is None
    assert sched.next_delay(0) is None


def test_make_event_envelope():
    ev = make_event("job.failed", {"job_id": 3, "reason": "bad image"}, job_id=None)
    assert ev.event_id.startswith("msg_") and len(ev.event_id) == 4 + 32
    assert ev.payload["type"] == "job.failed" and ev.payload["data"] == {"job_id": 3, "reason": "bad image"}
    assert ev.payload["timestamp"].endswith("Z")
    assert make_event("job.failed", {}).event_id != ev.event_id


def test_send_once_reports_status_and_connection_errors():
    with WebhookReceiver() as rx:
        assert send_once(rx.url, "msg_1", b'{"a":1}', rx.secret, 5) == (204, None)
        rx.fail_next(1)
        code, err = send_once(rx.url, "msg_2", b'{"a":1}', rx.secret, 5)
        assert code == 500 and err is not None and err.startswith("HTTP 500")
        assert [e["webhook_id"] for e in rx.events()] == ["msg_1"]
        dead_url = rx.url
    code, err = send_once(dead_url, "msg_3", b"{}", rx.secret, 2)  # receiver closed: connection refused
    assert code is None and err and "Connect" in err


def test_sqlite_fan_out_deliver_dead_letter_and_replay(sqlite_url):
    with WebhookReceiver() as rx:
        with session_scope(sqlite_url) as s:
            add_subscription(s, "rx", rx.url, ["job.succeeded"], rx.secret)
        ids = _emit(sqlite_url, 3)
        _emit(sqlite_url, 1, "job.failed")  # no subscriber for this type
        rx.fail_next(1000)
        sched = RetrySchedule((0.0,), jitter=0.0)
        _drain(sqlite_url, sched)
        with session_scope(sqlite_url) as s:
            rows = s.execute(select(WebhookDelivery)).scalars().all()
            assert sorted((r.status, r.attempts) for r in rows) == [("dead", 2)] * 3
            assert fan_out(s) == 0
        rx.fail_next(0)
        with session_scope(sqlite_url) as s:
            assert replay(s) == 3
        _drain(sqlite_url, sched)
        assert sorted(rx.hits) == sorted(ids)
        with session_scope(sqlite_url) as s:
            assert {r.status for r in s.execute(select(WebhookDelivery)).scalars()} == {"delivered"}


@pytest.mark.services
def test_replay_filters_by_event_ids_status_and_since(db_url):
    with WebhookReceiver() as rx:
        with session_scope(db_url) as s:
            add_subscription(s, "a", rx.url, ["*"], rx.secret)
            add_subscription(s, "b", rx.url, ["*"], rx.secret)
        ids = _emit(db_url, 3)
        _drain(db_url, RetrySchedule((0.0,), jitter=0.0))
        assert len(rx.hits) == 6  # two subscriptions, same webhook-id each: the receiver sees duplicates
        assert sorted({e["webhook_id"] for e in rx.events()}) == sorted(ids)
        with session_scope(db_url) as s:
            assert replay(s) == 0  # nothing dead
            assert replay(s, event_ids=[ids[0]], status=("delivered",), subscription="a") == 1
            assert replay(s, since=utcnow(), status=("delivered",)) == 0
        _drain(db_url, RetrySchedule((0.0,), jitter=0.0))
        assert rx.hits.count(ids[0]) == 3 and len(rx.hits) == 7
        with session_scope(db_url) as s:
            attempts = sorted(s.execute(select(WebhookDelivery.attempts)).scalars())
        assert attempts == [1, 1, 1, 1, 1, 2]  # replay keeps the attempt history


@pytest.mark.services
def test_concurrent_fan_out_creates_each_delivery_once(db_url):
    with session_scope(db_url) as s:
        add_subscription(s, "x", "http://127.0.0.1:9/x", ["*"])
        add_subscription(s, "y", "http://127.0.0.1:9/y", ["job.succeeded"])
    _emit(db_url, 150)
    created: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with session_scope(db_url) as s:
                    created.append(fan_out(s, limit=20))
                    left = s.scalar(select(func.count()).select_from(OutboxEvent)
                                    .where(OutboxEvent.dispatched_at.is_(None)))
                if not left:
                    return
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
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
        ids = _emit(db_url, 4)
        rx.fail_for(1.5)  # the first attempts fall inside the window even on a loaded machine
        _drain(db_url, RetrySchedule((0.05,) * 200, jitter=0.5))
        assert sorted(e["webhook_id"] for e in rx.events()) == sorted(ids)
        with session_scope(db_url) as s:
            rows = s.execute(select(WebhookDelivery)).scalars().all()
        assert len(rows) == 4 and all(r.attempts >= 2 and r.last_status_code == 204 for r in rows)


@pytest.mark.services
def test_run_dispatcher_loop_delivers_until_stopped(db_url):
    from connectors.outbox import run_dispatcher

    with WebhookReceiver() as rx:
        with session_scope(db_url) as s:
            add_subscription(s, "rx", rx.url, ["*"], rx.secret)
        stop = threading.Event()
        t = threading.Thread(target=run_dispatcher, args=(db_url, (0.0,), 5.0, stop), kwargs={"poll_interval": 0.05})
        t.start()
        try:
            ids = _emit(db_url, 5)  # emitted while the loop runs: picked up on a later poll
            deadline = time.monotonic() + 20
            while len(rx.events()) < 5 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            stop.set()
            t.join(10)
        assert not t.is_alive()
        assert sorted(rx.hits) == sorted(ids)


@pytest.mark.services
def test_paused_subscription_holds_its_deliveries_until_resumed(db_url):
    from services.schema import WebhookSubscription

    with WebhookReceiver() as rx:
        with session_scope(db_url) as s:
            add_subscription(s, "rx", rx.url, ["*"], rx.secret)
        ids = _emit(db_url, 2)
        with session_scope(db_url) as s:
            assert fan_out(s) == 2
            s.execute(select(WebhookSubscription)).scalar_one().active = False
        counts = dispatch_once(db_url, RetrySchedule((0.0,), jitter=0.0), timeout=5)
        assert counts.sent == 0 and rx.hits == []
        with session_scope(db_url) as s:
            assert pending_deliveries(s) == 0  # a drain loop does not wait on a paused subscription
        with session_scope(db_url) as s:
            s.execute(select(WebhookSubscription)).scalar_one().active = True
        _drain(db_url, RetrySchedule((0.0,), jitter=0.0))
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
