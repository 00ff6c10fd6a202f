"""The outbound guard and the sender on it: the requests of the hardening report that reached inside (loopback,
metadata, IPv6 loopback, integer hosts, metadata names) are refused when configured and when connecting, DNS
rebinding included; failed answers are kept short and masked; proxies, deadlines and the allowlist setting."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from connectors.outbound import OutboundGuard, OutboundRefused
from connectors.webhooks import ERROR_BODY, WebhookSender, add_subscription, new_secret
from services.cli.main import main as vlwatch
from services.db import session_scope
from services.schema import WebhookDelivery, WebhookSubscription
from services.settings import SettingsError, load_settings
from tests.connectors.outbox import dispatch_round, emit_n, loopback_sender

INSIDE = ["http://127.0.0.1:6379", "http://169.254.169.254/latest/meta-data/", "http://[::1]/hooks",
          "http://0x7f000001/hooks", "http://2130706433/", "http://127.1/", "http://metadata.google.internal/x",
          "http://[fd00:ec2::254]/", "http://[::ffff:127.0.0.1]/", "http://10.1.2.3/", "http://224.0.0.1/",
          "http://localhost:8080/"]


class Recorder:
    """A loopback HTTP server standing for an internal service: counts connections, answers ``answer()``."""

    def __init__(self, answer: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []  # (request target, headers)
        self.connections = 0
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                rec.connections += 1
                super().setup()

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                rec.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                answer(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def answer_with(status: int, body: bytes) -> Callable[[BaseHTTPRequestHandler], None]:
    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("content-length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return answer


@pytest.mark.parametrize("url", INSIDE)
def test_inside_addresses_are_refused_by_name_and_address(url: str):
    why = OutboundGuard().check_url(url)
    assert why is not None and why.startswith("refused: ")
    assert "VLWATCH_OUTBOUND_ALLOW" in why or "metadata host name" in why


def test_public_addresses_pass_and_the_allowlist_lets_named_networks_through():
    assert OutboundGuard().check_url("https://8.8.8.8/hooks") is None
    assert OutboundGuard().check_url("https://[2606:4700:4700::1111]/hooks") is None
    loopback = OutboundGuard.allowing(["127.0.0.1/32"])
    assert loopback.check_url("http://127.0.0.1:6379") is None
    assert loopback.check_url("http://[::ffff:127.0.0.1]/") is None  # the IPv4 address inside is allowed
    assert loopback.check_url("http://127.0.0.2/") is not None
    assert loopback.check_url("http://169.254.169.254/") is not None


def test_webhooks_add_refuses_inside_urls_naming_the_setting(db_url: str):
    env = {"VLWATCH_DATABASE_URL": db_url, "VLWATCH_OUTBOUND_ALLOW": ""}
    for url in ["http://127.0.0.1:6379", "http://169.254.169.254/latest", "http://[::1]/x", "http://0x7f000001/x",
                "http://metadata.google.internal/x"]:
        res = CliRunner().invoke(vlwatch, ["webhooks", "add", "in", url], env=env)
        assert res.exit_code != 0, (url, res.output)
        assert "refused" in res.output and ("VLWATCH_OUTBOUND_ALLOW" in res.output or "metadata" in res.output)
    with session_scope(db_url) as s:
        assert s.scalars(select(WebhookSubscription)).all() == []
    res = CliRunner().invoke(vlwatch, ["webhooks", "add", "local", "http://127.0.0.1:9/x"],
                             env={**env, "VLWATCH_OUTBOUND_ALLOW": "127.0.0.1/32"})
    assert res.exit_code == 0 and "added local" in res.output


def test_the_sender_refuses_at_connect_time_and_keeps_no_internal_body(db_url: str):
    internal = Recorder(answer_with(200, b'{"redis": "PONG", "secret": "internal"}'))
    try:
        with session_scope(db_url) as s:  # written straight to SQL, past `webhooks add`
            for i, host in enumerate(["127.0.0.1", "0x7f000001", "2130706433"]):
                add_subscription(s, f"in{i}", f"http://{host}:{internal.port}/", ["*"])
        emit_n(db_url, 2)
        with WebhookSender() as strict:
            from connectors.dispatch import dispatch_once

            counts = dispatch_once(db_url, (60.0,), timeout=5, sender=strict)
        assert counts.sent == 6 and counts.delivered == 0 and counts.retrying == 6
        assert internal.connections == 0 and internal.requests == []
        with session_scope(db_url) as s:
            errors = s.scalars(select(WebhookDelivery.last_error)).all()
        assert len(errors) == 6 and all(e.startswith("refused: ") and "127.0.0.1" in e for e in errors)
        assert not any("PONG" in e for e in errors)
    finally:
        internal.close()


def test_dns_rebinding_is_refused_at_connect_time(monkeypatch: pytest.MonkeyPatch):
    """A name that resolves to a public address when configured and to loopback when connecting."""
    internal = Recorder(answer_with(200, b"inside"))
    real = socket.getaddrinfo
    answers = iter(["93.184.216.34", "127.0.0.1", "127.0.0.1"])

    def rebinding(host: str, port: Any, *args: Any, **kw: Any) -> list:
        if host == "hooks.rebind.test":
            return real(next(answers), port, *args, **kw)
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    url = f"http://hooks.rebind.test:{internal.port}/in"
    try:
        assert OutboundGuard().check_url(url) is None  # configured while the name looked public
        with WebhookSender() as sender:
            a = sender.send(url, "msg_1", b"{}", new_secret(), 5)
        assert a.status_code is None and a.error is not None
        assert "hooks.rebind.test resolves to 127.0.0.1" in a.error
        assert internal.connections == 0
    finally:
        internal.close()


def test_the_peer_address_itself_is_checked():
    """Whatever a resolver answered, the address the socket reached is judged again."""
    internal = Recorder(answer_with(200, b"inside"))

    class Fooled(OutboundGuard):
        def resolve(self, host: str, port: int) -> list[tuple]:
            return socket.getaddrinfo("127.0.0.1", port, type=socket.SOCK_STREAM)  # unchecked

    try:
        with pytest.raises(OutboundRefused, match="reached 127.0.0.1, a loopback address"):
            Fooled().connect(("public.example", internal.port), timeout=5)
    finally:
        internal.close()


def test_a_failed_answer_is_kept_short_printable_and_masked():
    body = b"\x00\x1b[31m see http://admin:hunter2@10.0.0.5/db?token=abc " + b"x" * 200_000
    rx = Recorder(answer_with(500, body))
    try:
        with loopback_sender() as sender:
            a = sender.send(f"http://127.0.0.1:{rx.port}/", "msg_1", b"{}", new_secret(), 5)
            again = sender.send(f"http://127.0.0.1:{rx.port}/", "msg_2", b"{}", new_secret(), 5)
    finally:
        rx.close()
    assert a.status_code == 500 and a.error is not None and again.status_code == 500
    assert a.error.startswith("HTTP 500: ") and len(a.error) <= len("HTTP 500: ") + ERROR_BODY
    assert "\x00" not in a.error and "\x1b" not in a.error
    assert "http://admin:***@10.0.0.5/db?token=***" in a.error and "hunter2" not in a.error


def test_last_error_of_a_failed_delivery_is_masked_and_truncated(db_url: str):
    rx = Recorder(answer_with(503, b"down, ask http://ops:hunter2@10.0.0.5/status " + b"y" * 50_000))
    try:
        with session_scope(db_url) as s:
            add_subscription(s, "rx", f"http://127.0.0.1:{rx.port}/", ["*"])
        emit_n(db_url, 1)
        assert dispatch_round(db_url, (60.0,)).retrying == 1
        with session_scope(db_url) as s:
            d = s.scalars(select(WebhookDelivery)).one()
    finally:
        rx.close()
    assert d.last_status_code == 503 and d.last_error.startswith("HTTP 503: down, ask http://ops:***@10.0.0.5")
    assert "hunter2" not in d.last_error and len(d.last_error) <= 20 + ERROR_BODY


def test_an_attempt_ends_after_the_timeout_even_when_the_receiver_trickles():
    def trickle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("content-length", "1000")
        h.end_headers()
        for _ in range(100):  # a byte every 0.2 s: each read is within the socket timeout
            try:
                h.wfile.write(b"x")
                h.wfile.flush()
            except OSError:
                return
            time.sleep(0.2)

    rx = Recorder(trickle)
    try:
        with loopback_sender() as sender:
            t = time.monotonic()
            a = sender.send(f"http://127.0.0.1:{rx.port}/", "msg_1", b"{}", new_secret(), 1.0)
            took = time.monotonic() - t
    finally:
        rx.close()
    assert a.status_code is None and a.error == "TimeoutError: no complete answer within 1s"
    assert took < 3.0


def test_proxies_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    proxy = Recorder(answer_with(204, b""))
    direct = Recorder(answer_with(204, b""))
    monkeypatch.setenv("HTTP_PROXY", f"http://scout:pa%24s@127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    try:
        with loopback_sender() as sender:
            via = sender.send("http://hooks.example.test/in?a=1", "msg_1", b"{}", new_secret(), 5)
            bypass = sender.send(f"http://127.0.0.1:{direct.port}/in", "msg_2", b"{}", new_secret(), 5)
            inside = sender.send("http://10.9.8.7/in", "msg_3", b"{}", new_secret(), 5)
    finally:
        proxy.close()
        direct.close()
    assert via == bypass and via.status_code == 204 and via.error is None
    (target, headers), = proxy.requests
    assert target == "http://hooks.example.test/in?a=1" and headers["host"] == "hooks.example.test"
    assert headers["proxy-authorization"] == "Basic c2NvdXQ6cGEkcw=="  # scout:pa$s
    assert [t for t, _ in direct.requests] == ["/in"]
    assert inside.error is not None and inside.error.startswith("refused: 10.9.8.7 is a private address")


def test_the_allowlist_setting_is_validated_and_names_the_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VLWATCH_OUTBOUND_ALLOW", "127.0.0.1/32, 10.0.0.0/8")
    assert load_settings().outbound_allow == ("127.0.0.1/32", "10.0.0.0/8")
    assert load_settings(outbound_allow=()).outbound_allow == ()
    monkeypatch.setenv("VLWATCH_OUTBOUND_ALLOW", "127.0.0.1/32,intranet")
    with pytest.raises(SettingsError, match="VLWATCH_OUTBOUND_ALLOW: .*'intranet' is not a network"):
        load_settings()
