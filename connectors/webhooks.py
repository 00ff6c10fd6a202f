"""Webhook subscribers: subscriptions, Standard Webhooks signing, and the signed POST of one delivery.

Every delivery carries ``webhook-id`` (the event's id: the same on every retry and replay, so receivers
dedupe), ``webhook-timestamp`` (seconds) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`` keyed by the base64 part of the ``whsec_`` secret), signed by the
``standardwebhooks`` library with one signer per subscription.

A POST goes through the outbound guard (:mod:`connectors.outbound`: no loopback, private, link-local or metadata
address unless allowlisted, judged on the address actually connected) over kept-alive connections
(:mod:`connectors.post`): redirects are not followed (a 3xx is a failed attempt), an attempt ends after
``timeout`` seconds in all, proxies come from the environment, credentials in the URL become basic auth. A 2xx
delivers; any other answer, a timeout, a refused or failed connection is retried along the schedule, with the start
of a failed answer's body (printable, masked, at most ``ERROR_BODY`` characters) kept in ``last_error``; a refused
connection never sent anything, so there is no body to keep.
"""

from __future__ import annotations

import base64
import http.client
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional, Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from connectors import lifecycle
from connectors.lifecycle import Claimed, DeliveryKind, Outcome
from connectors.outbound import OutboundGuard, OutboundRefused
from connectors.post import HttpPoster
from services.safetext import mask_secrets
from services.schema import DeliveryStatus, WebhookDelivery, WebhookSubscription, utcnow

WEBHOOKS = DeliveryKind("webhook", WebhookDelivery, WebhookSubscription, "subscription_id", keeps_status_code=True)

ERROR_BODY = 300  # characters of a failed answer's body kept in last_error


# ---- signing -----------------------------------------------------------------------------------------------
def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def signed_headers(signer: Webhook | str, msg_id: str, body: bytes, now: Optional[datetime] = None
                   ) -> dict[str, str]:
    """The headers of one delivery; ``signer`` is a subscription's ``Webhook`` (or its secret)."""
    if isinstance(signer, str):
        signer = Webhook(signer)
    ts = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(ts.timestamp())),
        "webhook-signature": signer.sign(msg_id, ts, body.decode()),
        "content-type": "application/json",
        "user-agent": "vlwatch-webhooks/1",
    }


# ---- sending -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    status_code: Optional[int]
    error: Optional[str]  # None iff 2xx


def _printable(head: bytes) -> str:
    text = head.decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else " " for ch in text)[:ERROR_BODY]


class WebhookSender:
    """Signed POSTs through ``guard``; any thread may send (each keeps its own connections). Whoever sends
    deliveries in a loop keeps one sender for all of them and closes it at the end."""

    def __init__(self, guard: Optional[OutboundGuard] = None) -> None:
        self.guard = guard or OutboundGuard()
        self._poster = HttpPoster(self.guard)
        self._signers: dict[tuple[int, str], Webhook] = {}  # (subscription id, secret) -> its signer
        self._lock = threading.Lock()

    def send(self, url: str, msg_id: str, body: bytes, secret: Webhook | str, timeout: float) -> Attempt:
        """One signed POST; the attempt ends after ``timeout`` seconds in all."""
        try:
            answer = self._poster.post(url, body, signed_headers(secret, msg_id, body), timeout)
        except OutboundRefused as exc:
            return Attempt(None, str(exc))
        except (OSError, http.client.HTTPException) as exc:
            return Attempt(None, f"{type(exc).__name__}: {exc}"[:ERROR_BODY])
        if 200 <= answer.status < 300:
            return Attempt(answer.status, None)
        return Attempt(answer.status, mask_secrets(f"HTTP {answer.status}: {_printable(answer.head)}").rstrip())

    def deliver(self, claimed: Claimed, timeout: float) -> Outcome:
        """Send one claimed delivery with its subscription's signer."""
        a = self.send(claimed.target.url, claimed.event_id, claimed.body.encode(), self._signer(claimed.target),
                      timeout)
        return Outcome(claimed, a.error, a.status_code)

    def _signer(self, sub: WebhookSubscription) -> Webhook:
        key = (sub.id, sub.secret)
        signer = self._signers.get(key)
        if signer is None:
            with self._lock:
                signer = self._signers[key] = Webhook(sub.secret)
        return signer

    def close_thread(self) -> None:
        """Close the calling thread's connections."""
        self._poster.close_thread()

    def close(self) -> None:
        self._poster.close()

    def __enter__(self) -> "WebhookSender":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


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
