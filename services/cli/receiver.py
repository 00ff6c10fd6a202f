"""A verifying webhook receiver on 127.0.0.1, for the demo, tests and benchmarks.

Checks every request with the ``standardwebhooks`` library against its secret, answers 401 to a bad signature,
dedupes by ``webhook-id`` and keeps the verified events. ``fail_next(n)`` makes it answer 500 to the next n
requests, ``fail_for(seconds)`` to every request in a time window (a receiver that is down, then recovers).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from standardwebhooks import Webhook, WebhookVerificationError

from connectors.webhooks import new_secret


class WebhookReceiver:
    def __init__(self, secret: Optional[str] = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.secret = secret or new_secret()
        self._verifier = Webhook(self.secret)
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self.hits: list[str] = []  # webhook-id of every request that verified, duplicates included
        self.rejected = 0
        self._fail = 0
        self._fail_until = 0.0  # time.monotonic() deadline of a failure window
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: senders reuse their connection

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = receiver._handle(body, {k.lower(): v for k, v in self.headers.items()})
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/hooks"

    def _handle(self, body: bytes, headers: dict[str, str]) -> int:
        with self._lock:
            if self._fail > 0:
                self._fail -= 1
                return 500
            if time.monotonic() < self._fail_until:
                return 500
        try:
            payload = self._verifier.verify(body, headers)
        except WebhookVerificationError:
            with self._lock:
                self.rejected += 1
            return 401
        msg_id = headers["webhook-id"]
        with self._lock:
            self.hits.append(msg_id)
            if msg_id not in self._seen:
                self._seen.add(msg_id)
                self._events.append({"webhook_id": msg_id, "payload": payload})
        return 204

    def fail_next(self, n: int) -> None:
        with self._lock:
            self._fail = n

    def fail_for(self, seconds: float) -> None:
        """Answer 500 to every request for the next ``seconds`` (an outage window)."""
        with self._lock:
            self._fail_until = time.monotonic() + seconds

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def __enter__(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


def main() -> None:
    """``python -m services.cli.receiver [--port P] [--secret whsec_...]``: a verifying receiver for trying
    subscriptions out; prints its URL and secret, and the count of verified events when stopped (SIGTERM)."""
    import argparse
    import signal
    import sys

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--secret", default=None)
    args = ap.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with WebhookReceiver(args.secret, port=args.port) as rx:
        print(rx.url, rx.secret, flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        print(f"verified {len(rx.events())} event(s), {len(rx.hits)} request(s), rejected {rx.rejected}",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
