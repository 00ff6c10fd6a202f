"""The listener against clients that would hold it open, make it read what it refuses, or feed it documents no
parser should take: real sockets to a receiver on a free loopback port, with real PostgreSQL, SeaweedFS and Redis
behind it (and TCP forwarders that a test takes down for an outage)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import fields

import httpx
import pytest
from sqlalchemy.engine import make_url

from services.db import session_scope
from services.ingest.http_guard import Limits
from services.ingest.listener import NotifyServer
from services.settings import Settings, SettingsError, load_settings
from services.storage import S3Store
from services.tokens import add_token
from tests.connectors.tcpproxy import TcpProxy, closed_port
from tests.ingest.events import ONE, TWO, doc, raw
from tests.waiting import wait_for

pytestmark = pytest.mark.services

TOKEN = "s3cr3t"
LIMITS = Limits(timeout=1.0, max_connections=8, max_body=1024 * 1024)
K1 = "shelf/a b+c é.png"  # the key of s3_put.json and seaweedfs_create.json


def connect(srv: NotifyServer) -> socket.socket:
    return socket.create_connection(srv.server_address[:2], timeout=10)


def request_head(path: str = "/events/s3", token: str | None = TOKEN, length: object = None,
                 extra: tuple[str, ...] = ()) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: vlwatch", "Content-Type: application/json", *extra]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(sock: socket.socket, within: float = 5.0) -> tuple[int, dict]:
    """The status and JSON body of the next answer on ``sock``."""
    sock.settimeout(within)
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, json.loads(resp.read() or b"{}")


def ending(sock: socket.socket, within: float) -> str:
    """How the server ends ``sock`` within ``within`` seconds: '503' (answered busy), 'closed' (no answer),
    'reset', or 'open' (still held)."""
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        return "503" if data.startswith(b"HTTP/1.1 503 ") else "reset"
    except TimeoutError:
        return "open"
    return "503" if data.startswith(b"HTTP/1.1 503 ") else "closed" if not data else data[:12].decode()


def post(srv: NotifyServer, body: bytes, path: str = "/events/s3", token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(srv.url + path, content=body, headers=headers, timeout=30)


def handler_threads() -> int:
    return sum(t.name.endswith("(process_request_thread)") for t in threading.enumerate())


# ---- holding the listener open ----------------------------------------------------------------------------

def test_half_open_connections_hold_a_bounded_number_of_threads_for_the_timeout(receiver, store, jobs):
    store.put(K1, ONE)
    limits = Limits(timeout=3.0, max_connections=8)  # the slots are still held when the flood has been sent
    srv = receiver(token=TOKEN, limits=limits)
    socks: list[socket.socket] = []
    peak = 0
    try:
        for _ in range(320):  # a request line and a header each, and never the rest
            s = connect(srv)
            s.sendall(b"POST /events/s3 HTTP/1.1\r\nHost: vlwatch\r\n")
            socks.append(s)
            peak = max(peak, handler_threads())
        t0 = time.monotonic()
        busy = post(srv, raw("s3_put.json", store.bucket))  # every slot is held: come back later, at once
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        assert time.monotonic() - t0 < 1
        peak = max(peak, handler_threads())
        ends = [ending(s, limits.timeout + 3) for s in socks]  # the busy ones at once, the others at the timeout
    finally:
        for s in socks:
            s.close()
    assert peak <= limits.max_connections
    assert set(ends) == {"503", "closed"}, ends  # none is held past the timeout; none goes unanswered for long
    r = post(srv, raw("s3_put.json", store.bucket))
    assert r.status_code == 200 and r.json()["registered"] == 1 and len(jobs()) == 1


def test_a_client_trickling_its_headers_is_cut_off_at_the_timeout(receiver):
    srv = receiver(token=TOKEN, limits=LIMITS)
    t0 = time.monotonic()
    ended = None
    with connect(srv) as s:
        for byte in request_head(length=10).replace(b"\r\n\r\n", b"\r\nX-Pad: " + b"a" * 200 + b"\r\n\r\n"):
            try:  # one byte every 0.1 s: each read is quick, the request would take 30 s
                s.sendall(bytes([byte]))
            except OSError:
                ended = time.monotonic() - t0
                break
            if ending(s, 0.1) != "open":
                ended = time.monotonic() - t0
                break
            if time.monotonic() - t0 > 4 * LIMITS.timeout:
                break
    assert ended is not None and ended < LIMITS.timeout + 1, f"still connected after {time.monotonic() - t0:.1f}s"


def test_a_body_that_does_not_arrive_in_time_is_a_400(receiver, store):
    srv = receiver(token=TOKEN, limits=LIMITS)
    body = raw("s3_put.json", store.bucket)
    with connect(srv) as s:
        s.sendall(request_head(length=len(body) + 10) + body)  # ten bytes short, and the client waits
        t0 = time.monotonic()
        status, err = answer(s, within=LIMITS.timeout + 3)
        assert status == 400 and "not complete" in err["error"] and time.monotonic() - t0 < LIMITS.timeout + 1
        assert ending(s, 2) == "closed"


# ---- refusing from the headers ----------------------------------------------------------------------------

@pytest.mark.parametrize("token", [None, "wrong"])
def test_an_unauthenticated_8_mb_post_is_refused_before_its_body_is_read(receiver, token):
    srv = receiver(token=TOKEN)  # the default limits: 8 MiB bodies
    size = 8 * 1024 * 1024
    with connect(srv) as s:
        s.sendall(request_head(token=token, length=size, extra=("Expect: 100-continue",)))  # no body yet
        assert answer(s, within=3)[0] == 401  # not "100 Continue", not a wait for 8 MB
        sent, chunk = 0, b"x" * 65536
        with pytest.raises(OSError):  # the server has closed its end: the body goes nowhere
            while sent < size:
                sent += s.send(chunk)
    assert sent < size


def test_tokens_without_the_right_and_oversized_bodies_are_refused_from_the_headers(receiver, db_url):
    with session_scope(db_url) as ses:
        reader = add_token(ses, "reader")
    srv = receiver(token=TOKEN)
    for token, path, length, status in [(reader, "/events/s3", 1000, 403), (None, "/events/nope", 10**6, 404),
                                        (TOKEN, "/events/s3", 8 * 1024 * 1024 + 1, 413)]:
        with connect(srv) as s:
            s.sendall(request_head(path, token, length))
            assert answer(s, within=3)[0] == status
            assert ending(s, 2) == "closed"


# ---- malformed requests and documents: 400 (a retry would fail the same way) ----------------------------

@pytest.mark.parametrize("headers, body, status", [
    ((), b"", 411),  # no Content-Length
    (("Transfer-Encoding: chunked",), b"2\r\n{}\r\n0\r\n\r\n", 411),
    (("Content-Length: abc",), b"{}", 400),
    (("Content-Length: -5",), b"{}", 400),
    (("Content-Length: 1e3",), b"{}", 400),
    (("Content-Length: +2",), b"{}", 400),
    (("Content-Length: 99999999999999999999999",), b"{}", 400),
    (("Content-Length: 2", "Content-Length: 3"), b"{}", 400),
    (("Content-Length: 0",), b"", 400),
], ids=["missing", "chunked", "letters", "negative", "exponent", "plus", "huge", "conflicting", "zero"])
def test_bad_framing_is_answered_never_dropped(receiver, headers, body, status):
    srv = receiver(token=TOKEN, limits=LIMITS)
    with connect(srv) as s:
        s.sendall(request_head(extra=headers) + body)
        got, err = answer(s, within=LIMITS.timeout + 3)
    assert got == status and err["error"]


def test_a_body_shorter_than_its_content_length_is_a_400(receiver):
    srv = receiver(token=TOKEN, limits=LIMITS)
    with connect(srv) as s:
        s.sendall(request_head(length=100) + b'{"Records": []}')
        s.shutdown(socket.SHUT_WR)  # and no more
        status, err = answer(s)
    assert status == 400 and "ended after 15 of 100 bytes" in err["error"]


def _s3(bucket: str, **obj: object) -> bytes:
    d = doc("s3_put.json", bucket)
    d["Records"][0]["s3"]["object"].update(obj)
    return json.dumps(d).encode()


def _seaweed(bucket: str, change) -> bytes:  # noqa: ANN001
    d = doc("seaweedfs_create.json", bucket)
    change(d)
    return json.dumps(d).encode()


def _mtime(value: object):  # noqa: ANN202
    return lambda d: d["message"]["new_entry"]["attributes"].update(mtime=value)


def _rename_to(parent: object):  # noqa: ANN202
    return lambda d: d.update(event_type="rename") or d["message"].update(
        old_entry=d["message"]["new_entry"], new_parent_path=parent)


MALFORMED_S3 = {
    "nested arrays": lambda b: b"[" * 100_000 + b"]" * 100_000,
    "nested Records": lambda b: b'{"Records": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "NaN": lambda b: b'{"Records": [], "retries": NaN}',
    "Infinity size": lambda b: _s3(b).replace(b'"size": 25', b'"size": Infinity'),
    "-Infinity size": lambda b: _s3(b).replace(b'"size": 25', b'"size": -Infinity'),
    "5000-digit size": lambda b: _s3(b).replace(b'"size": 25', b'"size": 1' + b"0" * 5000),
    "size 10**30": lambda b: _s3(b, size=10**30),
    "sequencer a number": lambda b: _s3(b, sequencer=5),
    "key with a lone surrogate": lambda b: _s3(b, key="shelf/\ud800.png"),
    "Records an object": lambda b: b'{"Records": {"eventName": "ObjectCreated:Put"}}',
    "eventName a number": lambda b: b'{"Records": [{"eventName": 5}]}',
    "top level a list": lambda b: b"[]",
    "not UTF-8": lambda b: b'{"Records": ["\xff"]}',
    "not JSON": lambda b: b'{"Records": [',
}
MALFORMED_SEAWEED = {
    "mtime 10**30": _mtime(10**30),
    "mtime 1e300": _mtime(1e300),
    "mtime before year 1": _mtime(-10**15),
    "rename to a numeric parent": _rename_to(5),
    "event_type a list": lambda d: d.update(event_type=["create"]),
    "message a string": lambda d: d.update(message="create"),
}


def test_every_malformed_document_is_a_400_and_the_listener_goes_on(receiver, store, jobs):
    store.put(K1, ONE)
    srv = receiver(token=TOKEN, limits=LIMITS)
    answers = {name: post(srv, make(store.bucket)) for name, make in MALFORMED_S3.items()}
    answers |= {name: post(srv, _seaweed(store.bucket, change), "/events/seaweedfs")
                for name, change in MALFORMED_SEAWEED.items()}
    got = {name: (r.status_code, r.json().get("error", "")[:80]) for name, r in answers.items()}
    assert {name: status for name, (status, _) in got.items()} == dict.fromkeys(got, 400), got
    assert all(reason for _, reason in got.values()), got
    assert jobs() == []
    r = post(srv, raw("s3_put.json", store.bucket))
    assert r.status_code == 200 and r.json()["registered"] == 1
    r = post(srv, raw("seaweedfs_create.json", store.bucket), "/events/seaweedfs")
    assert r.status_code == 200 and r.json()["already"] == 1 and len(jobs()) == 1


# ---- outages: 503 while PostgreSQL or the store is away, and back by itself -------------------------------

def test_database_and_store_outages_answer_503_and_the_listener_resumes(receiver, store, jobs, db_url,
                                                                         s3_settings):
    with session_scope(db_url) as ses:
        api_token = add_token(ses, "notifier", can_upload=True)
    pg = make_url(db_url)
    db_proxy = TcpProxy(pg.host, pg.port).start()
    s3_host, s3_port = s3_settings.endpoint.rsplit(":", 1)
    s3_proxy = TcpProxy(s3_host, int(s3_port)).start()
    objects = S3Store(f"127.0.0.1:{s3_proxy.port}", s3_settings.access_key, s3_settings.secret_key, store.bucket)
    srv = receiver(token=TOKEN, db=pg.set(host="127.0.0.1", port=db_proxy.port).render_as_string(False),
                   objects=objects, limits=LIMITS)
    store.put(K1, ONE)
    key2 = "shelf/second.png"
    store.put(key2, TWO)
    first, second = raw("s3_put.json", store.bucket), _s3(store.bucket, key="shelf/second.png", eTag=None)
    try:
        db_proxy.stop()
        for token in (TOKEN, api_token):  # the API token's lookup needs the database too
            r = post(srv, first, token=token)
            assert r.status_code == 503 and "temporarily unavailable" in r.json()["error"]
        db_proxy.start()
        r = post(srv, first, token=api_token)
        assert r.status_code == 200 and r.json()["registered"] == 1
        s3_proxy.stop()
        r = post(srv, second)
        assert r.status_code == 503 and "StorageUnavailable" in r.json()["error"]
        s3_proxy.start()
        r = post(srv, second)
        assert r.status_code == 200 and r.json()["registered"] == 1
    finally:
        db_proxy.stop()
        s3_proxy.stop()
    assert sorted(k for k, *_ in jobs()) == [K1, key2]


# ---- settings ---------------------------------------------------------------------------------------------

def test_vlwatch_listen_keeps_to_the_limits_of_its_settings(db_url, s3_settings, store, tmp_path):
    port = closed_port()
    env = {**os.environ, "VLWATCH_DATABASE_URL": db_url, "VLWATCH_S3_ENDPOINT": s3_settings.endpoint,
           "VLWATCH_S3_ACCESS_KEY": s3_settings.access_key, "VLWATCH_S3_SECRET_KEY": s3_settings.secret_key,
           "VLWATCH_BUCKET": store.bucket, "VLWATCH_DATA_DIR": str(tmp_path / "data"),
           "VLWATCH_NOTIFY_TIMEOUT_SECONDS": "1", "VLWATCH_NOTIFY_MAX_BODY_BYTES": "100"}
    log = tmp_path / "listen.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services", "listen", "--port", str(port), "--no-auth"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "listening" in log.read_text(), 30, "vlwatch listen")
        url = f"http://127.0.0.1:{port}/events/s3"
        r = httpx.post(url, content=raw("s3_put.json", store.bucket), timeout=10)
        assert r.status_code == 413 and "exceeds 100" in r.json()["error"]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /events/s3 HTTP/1.1\r\n")  # and nothing more: dropped after a second, not five
            t0 = time.monotonic()
            assert ending(s, 4) == "closed" and time.monotonic() - t0 < 2
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_limits_are_settings(monkeypatch):
    default = {f.name: f.default for f in fields(Settings)}
    assert Limits() == Limits(default["notify_timeout_seconds"], default["notify_max_connections"],
                              default["notify_max_body_bytes"])
    monkeypatch.setenv("VLWATCH_NOTIFY_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setenv("VLWATCH_NOTIFY_MAX_CONNECTIONS", "4")
    monkeypatch.setenv("VLWATCH_NOTIFY_MAX_BODY_BYTES", "65536")
    assert Limits.from_settings(load_settings()) == Limits(2.5, 4, 65536)
    monkeypatch.setenv("VLWATCH_NOTIFY_MAX_CONNECTIONS", "0")
    with pytest.raises(SettingsError, match="VLWATCH_NOTIFY_MAX_CONNECTIONS"):
        load_settings()
