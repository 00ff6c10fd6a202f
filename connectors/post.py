"""HTTP POSTs over kept-alive connections, every connection through the outbound guard (:mod:`connectors.outbound`).

Built on the standard library's ``http.client``. Measured against one loopback receiver on the 2-core build
machine (``python bench/webhooks.py --clients``), a POST costs ~0.7 ms of CPU with ``httpx.Client``, ~0.4 ms
with the bare ``httpcore`` pool and ~0.12 ms with ``http.client``; delivering 2,000 webhooks a second from one
process leaves no room for the first two. What a full client would add is kept here:

- keep-alive: each thread keeps one connection per origin (scheme, host, port) and reuses it; a connection idle
  for over ``IDLE_CHECK_S`` is checked before reuse and replaced when the server closed it (its socket is
  readable), so no POST is re-sent; a busy one is not checked (a server closes an idle connection after seconds);
- no redirects: a 3xx is an answer like any other;
- a deadline for the whole attempt: every socket operation is bounded by ``timeout``, and a watchdog cuts the
  connection of an attempt still running ``timeout`` seconds after it began (a receiver that trickles bytes);
- proxies from the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``; ``http://``
  proxies): absolute-form requests for ``http://`` targets, a ``CONNECT`` tunnel for ``https://`` ones. The proxy
  is the operator's and trusted; the target's name is judged by the guard before the connection (the proxy
  resolves and connects, so DNS rebinding behind a proxy is the proxy's to refuse);
- credentials in the URL become basic auth (``Authorization``; ``Proxy-Authorization`` for the proxy's);
- TLS with the system's trust store (``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` honoured);
- at most ``READ_AT_MOST`` bytes of an answer's body are read; a longer body closes its connection instead.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import select
import socket
import ssl
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

from connectors.outbound import OutboundGuard

READ_AT_MOST = 64 * 1024
IDLE_CHECK_S = 1.0
KEEP = 2048  # bytes of a body returned to the caller


@dataclass(frozen=True)
class Answer:
    status: int
    head: bytes  # the first bytes of the body


@dataclass(frozen=True)
class Target:
    """Where a URL's POST goes: the connection it needs and what the request line and headers carry."""

    origin: tuple[str, str, int]  # scheme, host, port
    request_uri: str  # "/path?query", or the absolute URL for a plain-HTTP proxy
    headers: dict[str, str]  # Authorization from the URL's credentials
    proxy: Optional[tuple[str, int, dict[str, str]]]  # host, port, Proxy-Authorization header


def _basic(user: Optional[str], password: Optional[str]) -> dict[str, str]:
    if user is None:
        return {}
    token = f"{unquote(user)}:{unquote(password or '')}".encode()
    return {"authorization": "Basic " + base64.b64encode(token).decode()}


def parse_target(url: str, proxies: dict[str, str]) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise http.client.InvalidURL("the URL must be http:// or https:// with a host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname
    proxy_url = proxies.get(parts.scheme) or proxies.get("all")
    proxy = None
    if proxy_url and not proxy_bypass_environment(host, proxies):
        p = urlsplit(proxy_url if "://" in proxy_url else f"http://{proxy_url}")
        if p.scheme != "http" or not p.hostname:
            raise http.client.InvalidURL("only http:// proxies are supported")
        creds = _basic(p.username, p.password)
        proxy = (p.hostname, p.port or 80, {"proxy-authorization": v for v in creds.values()})
    headers = _basic(parts.username, parts.password)
    if parts.scheme == "http" and proxy is not None:  # absolute-form request line to the proxy itself
        netloc = (f"[{host}]" if ":" in host else host) + ("" if port == 80 else f":{port}")
        return Target((parts.scheme, host, port), f"http://{netloc}{path}", {**headers, **proxy[2]}, proxy)
    return Target((parts.scheme, host, port), path, headers, proxy)


class _Deadlines:
    """Cuts the connection of an attempt that runs past its deadline: a receiver that sends a byte now and then
    keeps every single read within the socket timeout, so only a clock on the whole attempt ends it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, tuple[float, http.client.HTTPConnection]] = {}
        self._cut: set[int] = set()
        self._keys = itertools.count()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @contextmanager
    def bound(self, conn: http.client.HTTPConnection, seconds: float) -> Iterator[Callable[[], bool]]:
        """Within the block, ``conn`` is cut ``seconds`` from now; yields a test: was it cut?"""
        key = next(self._keys)
        with self._lock:
            self._open[key] = (time.monotonic() + seconds, conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="vlwatch-deadlines", daemon=True)
                self._thread.start()
        try:
            yield lambda: key in self._cut
        finally:
            with self._lock:
                self._open.pop(key, None)
                self._cut.discard(key)

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            with self._lock:
                late = [(k, c) for k, (t, c) in self._open.items() if t <= now and k not in self._cut]
                self._cut.update(k for k, _ in late)
            for _, conn in late:
                sock = conn.sock
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked reading it
                    except OSError:
                        pass

    def close(self) -> None:
        self._stop.set()


class HttpPoster:
    """POSTs through ``guard``; safe to share between threads (connections are per thread)."""

    def __init__(self, guard: OutboundGuard) -> None:
        self.guard = guard
        self._proxies = getproxies_environment()
        self._targets: dict[str, Target] = {}  # by URL
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._tls: Optional[ssl.SSLContext] = None
        self._deadlines = _Deadlines()

    def target(self, url: str) -> Target:
        t = self._targets.get(url)
        if t is None:
            t = self._targets[url] = parse_target(url, self._proxies)
        return t

    def post(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
        """One POST; raises ``OSError`` (``OutboundRefused``, ``TimeoutError`` ...) or ``HTTPException``."""
        target = self.target(url)
        conn = self._connection(target, timeout)
        with self._deadlines.bound(conn, timeout) as was_cut:
            try:
                conn.request("POST", target.request_uri, body=body, headers={**headers, **target.headers})
                resp = conn.getresponse()
                if resp.length is not None and resp.length <= READ_AT_MOST:
                    head = resp.read()
                else:  # chunked, unknown or long: read a bounded part; what is left closes the connection
                    head, left = resp.read(KEEP), READ_AT_MOST
                    while left > 0 and not resp.isclosed() and (chunk := resp.read(min(left, 16384))):
                        left -= len(chunk)
                    if not resp.isclosed():
                        conn.close()
            except (OSError, http.client.HTTPException):
                conn.close()
                if was_cut():
                    raise TimeoutError(f"no complete answer within {timeout:g}s") from None
                raise
        return Answer(resp.status, head[:KEEP])

    def _connection(self, target: Target, timeout: float) -> http.client.HTTPConnection:
        """This thread's connection to ``target``'s origin; one the server closed while idle is replaced."""
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
            self._local.used = {}
        conn = conns.get(target.origin)
        now = time.monotonic()
        if conn is None:
            conn = conns[target.origin] = self._new_connection(target)
            with self._lock:
                self._all.append(conn)
        elif (conn.sock is not None and now - self._local.used[target.origin] > IDLE_CHECK_S
              and select.select([conn.sock], [], [], 0)[0]):
            conn.close()  # an idle kept-alive socket that is readable was closed (or spoken to) by the server
        self._local.used[target.origin] = now
        if conn.timeout != timeout:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
        return conn

    def _new_connection(self, target: Target) -> http.client.HTTPConnection:
        scheme, host, port = target.origin
        if target.proxy is None:
            address, connect = (host, port), self.guard.connect
        else:
            address, connect = target.proxy[:2], self._via_proxy(host, port)
        if scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(*address, context=self._tls_context())
            if target.proxy is not None:
                conn.set_tunnel(host, port, headers=target.proxy[2])
        else:
            conn = http.client.HTTPConnection(*address)
        conn._create_connection = connect  # type: ignore[attr-defined]  # http.client's hook for making the socket
        return conn

    def _via_proxy(self, host: str, port: int) -> Callable[..., socket.socket]:
        def connect(address: tuple[str, int], timeout: Optional[float] = None,
                    source_address: Optional[tuple[str, int]] = None) -> socket.socket:
            try:
                self.guard.resolve(host, port)  # refuses a name that resolves to a refused address here
            except socket.gaierror:
                pass  # only the proxy can resolve it
            return socket.create_connection(address, timeout, source_address)

        return connect

    def _tls_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            return self._tls

    def close_thread(self) -> None:
        """Close the calling thread's connections (a thread that sends no more)."""
        mine = list(getattr(self._local, "conns", {}).values())
        self._local.conns = {}
        with self._lock:
            self._all = [c for c in self._all if c not in mine]
        for conn in mine:
            conn.close()

    def close(self) -> None:
        self._deadlines.close()
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
