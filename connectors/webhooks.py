"""Standard Webhooks: signing, the retry schedule, and one HTTP attempt.

Every delivery carries ``webhook-id`` (the event's id: the same on every retry and replay, so receivers
dedupe), ``webhook-timestamp`` (seconds) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`` keyed by the base64 part of the ``whsec_`` secret).
"""

from __future__ import annotations

import base64
import random
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional, Sequence

import httpx
from standardwebhooks import Webhook


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


DEFAULT_DELAYS: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
"""Svix-like: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h; then dead-letter (7 attempts in all)."""


@dataclass(frozen=True)
class RetrySchedule:
    """Delays (seconds) before attempts 2, 3, ...; each stretched or shrunk by up to ``jitter`` (a fraction).

    ``rand`` returns a float in [0, 1); inject ``random.Random(seed).random`` for reproducible jitter."""

    delays: Sequence[float] = DEFAULT_DELAYS
    jitter: float = 0.2
    rand: Callable[[], float] = random.random

    def next_delay(self, attempts_made: int) -> Optional[float]:
        """Seconds until the next attempt after ``attempts_made`` failed attempts; None: dead-letter."""
        if attempts_made < 1 or attempts_made > len(self.delays):
            return None
        base = float(self.delays[attempts_made - 1])
        return max(0.0, base * (1 + self.jitter * (2 * self.rand() - 1)))


@dataclass(frozen=True)
class Attempt:
    status_code: Optional[int]
    error: Optional[str]

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def send(client: httpx.Client, url: str, msg_id: str, body: bytes, secret: str, timeout: float) -> Attempt:
    """One POST. 2xx delivers; any other status, a timeout or a connection error is retried later."""
    try:
        resp = client.post(url, content=body, headers=signed_headers(secret, msg_id, body), timeout=timeout)
    except httpx.HTTPError as exc:
        return Attempt(None, f"{type(exc).__name__}: {exc}"[:1000])
    if 200 <= resp.status_code < 300:
        return Attempt(resp.status_code, None)
    return Attempt(resp.status_code, f"HTTP {resp.status_code}: {resp.text[:500]}")


def send_once(url: str, msg_id: str, body: bytes, secret: str,
              timeout: float) -> tuple[Optional[int], Optional[str]]:
    """One signed POST on a fresh connection: ``(status_code | None, error | None)``; error is None iff 2xx."""
    with httpx.Client(follow_redirects=False) as client:
        a = send(client, url, msg_id, body, secret, timeout)
    return a.status_code, a.error
