"""Webhook subscribers: subscriptions, Standard Webhooks signing, and sending through the delivery lifecycle.

Every delivery carries ``webhook-id`` (the event's id: the same on every retry and replay, so receivers
dedupe), ``webhook-timestamp`` (seconds) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`` keyed by the base64 part of the ``whsec_`` secret), signed by the
``standardwebhooks`` library.

Sending is an ``httpx`` POST: redirects are not followed (a 3xx is a failed attempt), the timeout applies to each
phase (connect, write, each read, the wait for a pooled connection), proxies come from the environment
(``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) and credentials in the URL become basic auth. A 2xx
delivers; any other answer, a timeout or a connection error is retried along the schedule, with the start of a
failed answer's body kept in ``last_error``.
"""

from __future__ import annotations

import base64
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional, Sequence

import httpx
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from connectors import lifecycle
from connectors.lifecycle import Claimed, Counts, DeliveryKind, Outcome, RetrySchedule
from services.schema import DeliveryStatus, WebhookDelivery, WebhookSubscription, utcnow

WEBHOOKS = DeliveryKind("webhook", WebhookDelivery, WebhookSubscription, "subscription_id", keeps_status_code=True)

CLAIM_SECONDS = 120.0  # the shortest lease of a claimed batch (see deliver_webhooks)


# ---- signing -----------------------------------------------------------------------------------------------
def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def signed_headers(secret: str, msg_id: str, body: bytes, now: Optional[datetime] = None) -> dict[str, str]:
    ts = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(ts.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, ts, body.decode()),
        "content-type": "application/json",
        "user-agent": "vlwatch-webhooks/1",
    }


# ---- sending -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    status_code: Optional[int]
    error: Optional[str]  # None iff 2xx


class WebhookSender:
    """Signed POSTs, ``concurrency`` at a time, over one ``httpx.Client`` whose keep-alive connections are reused.

    Whoever runs dispatch rounds in a loop keeps one sender for all of them and closes it at the end: making the
    client costs ~40 ms of CPU (it loads the CA bundle), and a kept client keeps its connections to receivers.
    The client is made on the first send, so a sender that never sends costs nothing."""

    READ_AT_MOST = 64 * 1024  # of a response body; a longer one closes its connection instead of draining it

    def __init__(self, concurrency: int = 8) -> None:
        self.concurrency = max(1, concurrency)
        self._client: Optional[httpx.Client] = None
        self._making = threading.Lock()  # the sending threads share one client
        self._threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="vlwatch-webhooks")

    @property
    def client(self) -> httpx.Client:
        with self._making:
            if self._client is None:
                self._client = httpx.Client(
                    follow_redirects=False, limits=httpx.Limits(max_keepalive_connections=max(20, self.concurrency)))
            return self._client

    def send(self, url: str, msg_id: str, body: bytes, secret: str, timeout: float) -> Attempt:
        """One signed POST."""
        try:
            with self.client.stream("POST", url, content=body, headers=signed_headers(secret, msg_id, body),
                                    timeout=timeout) as r:
                head = b""
                for chunk in r.iter_bytes():
                    head += chunk
                    if len(head) >= self.READ_AT_MOST:
                        break
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return Attempt(None, f"{type(exc).__name__}: {exc}"[:1000])
        if r.is_success:
            return Attempt(r.status_code, None)
        return Attempt(r.status_code, f"HTTP {r.status_code}: {head[:2000].decode('utf-8', 'replace')[:500]}")

    def send_each(self, claimed: Sequence[Claimed], timeout: float) -> list[Outcome]:
        """Send every claimed delivery once, ``concurrency`` at a time."""
        def attempt(c: Claimed) -> Outcome:
            a = self.send(c.target.url, c.event_id, c.body.encode(), c.target.secret, timeout)
            return Outcome(c, a.error, a.status_code)

        return [attempt(claimed[0])] if len(claimed) == 1 else list(self._threads.map(attempt, claimed))

    def close(self) -> None:
        self._threads.shutdown()
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "WebhookSender":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def deliver_webhooks(db_url: str, sender: WebhookSender, schedule: RetrySchedule, timeout: float,
                     limit: int = 200, now: Optional[datetime] = None) -> Counts:
    """Send every due webhook delivery once, then record each outcome."""
    # The lease covers the whole batch even if every send runs into its timeout (the timeout applies per phase,
    # hence the factor 2), so no other dispatcher claims a delivery that is still being sent.
    rounds = -(-limit // sender.concurrency)
    lease = max(CLAIM_SECONDS, 2 * rounds * timeout + 30.0)
    return lifecycle.deliver_due(db_url, WEBHOOKS, lambda claimed: sender.send_each(claimed, timeout), schedule,
                                 lease_s=lease, limit=limit, now=now)


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
    return lifecycle.counts_by_status(session, WEBHOOKS, subscription_id)


def replay(session: Session, *, subscription: Optional[str] = None, event_ids: Optional[Sequence[str]] = None,
           status: Sequence[str] = (DeliveryStatus.dead.value,), since: Optional[datetime] = None) -> int:
    """Make matching deliveries pending again, due now. Attempts are kept (history); the webhook-id is the
    event's, so receivers that already saw it dedupe. Returns how many were reset."""
    return lifecycle.replay(session, WEBHOOKS, status=status, event_ids=event_ids, since=since,
                            targets=None if subscription is None else [subscription])
