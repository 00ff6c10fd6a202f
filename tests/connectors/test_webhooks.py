"""Outbox dispatch and Standard Webhooks delivery on PostgreSQL, with a real HTTP receiver."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select
from standardwebhooks import Webhook, WebhookVerificationError

from connectors.dispatch import fan_out
from connectors.lifecycle import RetrySchedule
from connectors.webhooks import add_subscription, new_secret, replay, signed_headers
from services.cli.receiver import WebhookReceiver
from services.db import session_scope
from services.schema import WebhookDelivery, utcnow
from tests.connectors.outbox import dispatch_round, drain, emit_n, in_threads

pytestmark = pytest.mark.services


def test_signature_verifies_with_the_library_and_tampering_fails():
    secret = new_secret()
    body = json.dumps({"type": "job.succeeded", "data": {"x": 1}}).encode()
    headers = signed_headers(secret, "msg_abc", body)
    assert Webhook(secret).verify(body, headers) == {"type": "job.succeeded", "data": {"x": 1}}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"1", b"2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_retry_delays_follow_the_schedule_within_jitter():
    values = iter([0.0, 1.0, 0.5])
    sched = RetrySchedule((10, 100, 1000), jitter=0.2, rand=lambda: next(values))
    assert sched.next_delay(1) == pytest.approx(8.0)  # rand 0 -> -20 %
    assert sched.next_delay(2) == pytest.approx(120.0)  # rand 1 -> +20 %
    assert sched.next_delay(3) == pytest.approx(1000.0)
    assert sched.next_delay(4) is None  # schedule exhausted: dead-letter


def test_fan_out_respects_event_types_and_inactive_subscriptions(db_url):
    with session_scope(db_url) as s:
        add_subscription(s, "all", "http://127.0.0.1:9/a", ["*"])
        add_subscription(s, "fails-only", "http://127.0.0.1:9/b", ["job.failed"])
        add_subscription(s, "off", "http://127.0.0.1:9/c", ["*"]).active = False
    emit_n(db_url, 2, "job.succeeded")
    emit_n(db_url, 1, "job.failed")
    with session_scope(db_url) as s:
        assert fan_out(s) == 2 + 2
    with session_scope(db_url) as s:
        assert fan_out(s) == 0  # idempotent: every event is dispatched once
        assert s.scalar(select(func.count()).select_from(WebhookDelivery)) == 4


def test_receiver_that_fails_then_recovers_gets_every_event_once(db_url):
    with WebhookReceiver() as rx:
        with session_scope(db_url) as s:
            add_subscription(s, "rx", rx.url, ["*"], rx.secret)
        ids = emit_n(db_url, 5)
        rx.fail_next(7)  # the first round of 5 and two retries answer 500
        drain(db_url, RetrySchedule((0.0, 0.0, 0.0, 0.0), jitter=0.0))
        assert sorted(e["webhook_id"] for e in rx.events()) == sorted(ids)
        assert rx.rejected == 0
        with session_scope(db_url) as s:
            rows = s.execute(select(WebhookDelivery)).scalars().all()
            assert {r.status for r in rows} == {"delivered"}
            assert sum(r.attempts for r in rows) == 5 + 7


def test_dead_letter_after_schedule_then_replay_keeps_webhook_id(db_url):
    with WebhookReceiver() as rx:
        with session_scope(db_url) as s:
            add_subscription(s, "rx", rx.url, ["*"], rx.secret)
        (event_id,) = emit_n(db_url, 1)
        rx.fail_next(1000)
        sched = RetrySchedule((0.0, 0.0), jitter=0.0)
        drain(db_url, sched)
        with session_scope(db_url) as s:
            d = s.execute(select(WebhookDelivery)).scalar_one()
            assert (d.status, d.attempts, d.last_status_code) == ("dead", 3, 500)
        rx.fail_next(0)
        with session_scope(db_url) as s:
            assert replay(s, subscription="rx") == 1
        drain(db_url, sched)
        assert [e["webhook_id"] for e in rx.events()] == [event_id]
        assert rx.hits == [event_id]


def test_next_attempt_waits_for_the_scheduled_time(db_url):
    with WebhookReceiver() as rx:
        with session_scope(db_url) as s:
            add_subscription(s, "rx", rx.url, ["*"], rx.secret)
        emit_n(db_url, 1)
        rx.fail_next(1)
        sched = RetrySchedule((300.0,), jitter=0.0)
        dispatch_round(db_url, sched)
        with session_scope(db_url) as s:
            d = s.execute(select(WebhookDelivery)).scalar_one()
            wait = (d.next_attempt_at - d.last_attempt_at).total_seconds()
        assert wait == pytest.approx(300.0, abs=1.0)
        assert dispatch_round(db_url, sched).sent == 0  # not due yet
        later = utcnow() + timedelta(seconds=301)
        assert dispatch_round(db_url, sched, now=later).delivered == 1
        assert len(rx.events()) == 1


def test_two_dispatchers_never_double_send(db_url):
    with WebhookReceiver() as rx:
        with session_scope(db_url) as s:
            add_subscription(s, "rx", rx.url, ["*"], rx.secret)
        ids = emit_n(db_url, 60)
        sched = RetrySchedule((0.0,), jitter=0.0)

        def run() -> None:
            for _ in range(50):
                dispatch_round(db_url, sched)

        in_threads(2, run)
        assert sorted(rx.hits) == sorted(ids)  # every event exactly once, before any dedupe


def test_bad_signature_is_rejected_by_the_receiver():
    with WebhookReceiver() as rx:
        body = b'{"type":"job.succeeded"}'
        r = httpx.post(rx.url, content=body, headers=signed_headers(new_secret(), "msg_x", body))
        assert r.status_code == 401 and rx.events() == [] and rx.rejected == 1
