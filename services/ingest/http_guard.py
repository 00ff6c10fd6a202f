"""What keeps the listener's HTTP server (``services.ingest.listener``) answering whatever its clients do.

- **A deadline per request.** A request's line, headers and body must all arrive within ``Limits.timeout``
  seconds of its start, and an idle keep-alive connection is closed after as long. The deadline bounds the
  whole request, not each ``recv``: a client sending a byte a second would pass any per-read timeout forever.
- **Bounded concurrency.** At most ``Limits.max_connections`` connections are served at once, each by a thread
  of its own. One more is answered 503 (``Retry-After: 1``) at once and closed, so a flood of idle or half-open
  connections holds a bounded number of threads for at most the timeout, and the senders retry later. A client
  whose request had not yet arrived when the 503 left may see its connection reset instead; it retries as well.
- **Headers first.** A handler reads a body only through ``read_body``, after it has checked the path, the
  token and ``content_length``; an ``Expect: 100-continue`` is answered then, not before. A refusal
  (``Refused``) is answered from the headers alone and closes the connection, the body unread.
- **Framing the sender cannot fix by retrying** is a 4xx: no Content-Length (a chunked body included) 411, one
  that is not a plain decimal count or disagrees with another 400, one over ``Limits.max_body`` 413, a body
  that ends early or is not complete by the deadline 400.
"""

from __future__ import annotations

import io
import logging
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

_BYTE_COUNT = re.compile(r"[0-9]{1,18}")  # Content-Length: decimal digits only (no sign, no spaces, no '1e3')
_BUSY_BODY = b'{"error": "too many connections; retry later"}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
         b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


@dataclass(frozen=True)
class Limits:
    """The listener's limits; the defaults are those of the settings ``VLWATCH_NOTIFY_TIMEOUT_SECONDS``,
    ``VLWATCH_NOTIFY_MAX_CONNECTIONS`` and ``VLWATCH_NOTIFY_MAX_BODY_BYTES`` (``from_settings``)."""

    timeout: float = 5.0
    max_connections: int = 32
    max_body: int = 8 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings) -> "Limits":  # noqa: ANN001 - services.settings.Settings
        return cls(settings.notify_timeout_seconds, settings.notify_max_connections, settings.notify_max_body_bytes)


class Refused(Exception):
    """A request answered ``status`` with ``reason`` without reading (the rest of) its body."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class _DeadlineReader(io.RawIOBase):
    """The reading side of a connection: every ``recv`` waits at most until ``deadline`` (time.monotonic)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not complete in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class GuardedServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` with at most ``limits.max_connections`` handler threads (see the module)."""

    daemon_threads = True
    request_queue_size = 128  # connections waiting for accept(): the accept loop only starts threads or says 503

    def __init__(self, address: tuple[str, int], handler: type["GuardedHandler"], limits: Limits) -> None:
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:  # noqa: ANN001
        if not self._slots.acquire(blocking=False):
            _say_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # a thread that ends in process_request_thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:  # noqa: ANN001
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        """A connection that failed: a client gone is routine; anything else is logged with its traceback."""
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("connection from %s ended: %s", client_address[0], sys.exc_info()[1])
        else:
            log.exception("error serving %s", client_address[0])


def _say_busy(sock: socket.socket) -> None:
    try:
        sock.setblocking(False)
        sock.send(_BUSY)  # a fresh connection's send buffer takes these few bytes whole
        sock.recv(65536)  # what already came of the request: closing with it unread would reset the connection
    except OSError:  # BlockingIOError when nothing came yet, or the client is gone
        pass


class GuardedHandler(BaseHTTPRequestHandler):
    """A request handler whose reads keep to the request's deadline; bodies through ``read_body`` only."""

    server: GuardedServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain one made by StreamRequestHandler
        self._reader = _DeadlineReader(self.connection, time.monotonic() + self.server.limits.timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.deadline = time.monotonic() + self.server.limits.timeout
        self._continue = False
        super().handle_one_request()  # a read past the deadline ends in its ``except TimeoutError``: closed

    def handle_expect_100(self) -> bool:
        self._continue = True  # answered by read_body, once the headers have been found acceptable
        return True

    def flush_headers(self) -> None:
        self.connection.settimeout(self.server.limits.timeout)  # the answer gets a timeout of its own
        super().flush_headers()

    def content_length(self) -> int:
        """The request's body length from its headers; ``Refused`` (411, 400, 413) when it cannot be used."""
        if "Transfer-Encoding" in self.headers:
            raise Refused(411, "a body needs a Content-Length (Transfer-Encoding is not accepted)")
        values = {v.strip() for v in self.headers.get_all("Content-Length", [])}
        if not values:
            raise Refused(411, "a body needs a Content-Length")
        if len(values) > 1:
            raise Refused(400, "conflicting Content-Length headers")
        value = values.pop()
        if not _BYTE_COUNT.fullmatch(value):
            raise Refused(400, f"Content-Length {value[:40]!r} is not a byte count")
        length, limit = int(value), self.server.limits.max_body
        if length > limit:
            raise Refused(413, f"body of {length} bytes exceeds {limit}")
        return length

    def read_body(self, length: int) -> bytes:
        """The ``length`` bytes of the body, all before the request's deadline; ``Refused(400)`` otherwise."""
        if self._continue:
            super().handle_expect_100()
            self.wfile.flush()
        parts, got = [], 0
        try:
            while got < length:
                part = self.rfile.read1(min(length - got, 64 * 1024))
                if not part:
                    raise Refused(400, f"body ended after {got} of {length} bytes (Content-Length)")
                parts.append(part)
                got += len(part)
        except TimeoutError:
            raise Refused(400, f"body not complete after {self.server.limits.timeout:g} s: {got} of {length} "
                               "bytes (Content-Length)") from None
        return b"".join(parts)
