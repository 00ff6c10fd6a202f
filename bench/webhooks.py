"""Webhook delivery: the dispatcher against a keep-alive loop that signs and POSTs the same stored bodies, in the
same run, alternated; prints both rates and the ratio.

    python bench/webhooks.py [--deliveries 20000] [--rounds 5] [--fanned] [--clients]

- receiver: a separate process on loopback, an asyncio protocol that parses HTTP/1.1 requests (Content-Length
  bodies, keep-alive) and answers ``200`` with an empty body; it does not verify signatures, so that it is not
  what is measured (``services/cli/receiver.py`` verifies, at a few hundred requests a second).
- baseline: ``--per-target`` threads (as many as the dispatcher's lane for one subscription), each with one
  kept-alive ``http.client`` connection, sign (``standardwebhooks``, one signer) and POST the bodies as stored
  in ``outbox_events``; nothing is read from or written to the database while timing.
- project: ``connectors.dispatch.Dispatcher.run`` from start until every delivery is recorded ``delivered``:
  claims, signing, sending and recording included; fan-out of the outbox events included unless ``--fanned``
  (then the deliveries exist before the clock starts).
- ``--clients``: the CPU per POST of httpx, bare httpcore and http.client against the same receiver (why the
  sender is built on http.client).

PostgreSQL comes from VLWATCH_TEST_PG_URL (a server URL), else the test stack is started (tests/stack.py); a fresh
database ``vlwatch_bench_webhooks`` is made.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text  # noqa: E402

from bench.connectors import fresh_database  # noqa: E402

RECEIVER = r'''
import asyncio
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"

class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buf, self.need = transport, b"", None

    def data_received(self, data):
        self.buf += data
        while True:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, self.need = self.buf[:end].lower(), 0
                at = head.find(b"content-length:")
                if at >= 0:
                    self.need = int(head[at + 15:].split(b"\r\n", 1)[0])
                self.buf = self.buf[end + 4:]
            if len(self.buf) < self.need:
                return
            self.buf, self.need = self.buf[self.need:], None
            self.transport.write(OK)

async def main():
    server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
'''


CPU: dict[str, list[float]] = {"baseline": [], "project": []}  # this process's CPU seconds per delivery


def prepare(db_url: str, n: int, url: str, secret: str, fanned: bool) -> list[tuple[str, bytes]]:
    """A subscription and ``n`` outbox events (fanned out to deliveries with ``fanned``); returns the stored
    (event id, body) pairs."""
    from connectors.dispatch import fan_out
    from connectors.webhooks import add_subscription
    from services.db import session_scope
    from services.events import event_row
    from services.schema import OutboxEvent

    with session_scope(db_url) as s:
        s.execute(text("TRUNCATE webhook_deliveries, webhook_subscriptions, connector_deliveries, outbox_events "
                       "RESTART IDENTITY CASCADE"))
        add_subscription(s, "bench", url, ["*"], secret)
    rows = [event_row("job.succeeded", None, {"image": {"id": i, "bucket": "b", "key": f"aisle-7/{i:06d}.jpg"},
                                             "results": {"barcodes": [{"value": f"WH-{i:05d}", "format": "Code128",
                                                                       "x1": 1.0, "y1": 2.0, "x2": 3.0, "y2": 4.0}],
                                                         "text_lines": [], "objects": []}})
            for i in range(n)]
    with session_scope(db_url) as s:
        s.execute(OutboxEvent.__table__.insert(), rows)
    if fanned:
        with session_scope(db_url) as s:
            while fan_out(s):
                pass
    with session_scope(db_url) as s:
        stored = s.execute(text("SELECT event_id, payload::text FROM outbox_events ORDER BY id")).all()
    return [(event_id, body.encode()) for event_id, body in stored]


def baseline(port: int, secret: str, bodies: list[tuple[str, bytes]], threads: int) -> float:
    """Sign and POST every body over ``threads`` kept-alive http.client connections; deliveries/s."""
    import http.client

    from connectors.webhooks import signed_headers
    from standardwebhooks import Webhook

    signer = Webhook(secret)
    local = threading.local()

    def post(item: tuple[str, bytes]) -> int:
        conn = getattr(local, "conn", None) or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        local.conn = conn
        msg_id, body = item
        conn.request("POST", "/hooks", body=body, headers=signed_headers(signer, msg_id, body))
        r = conn.getresponse()
        r.read()
        return r.status

    with ThreadPoolExecutor(threads) as pool:
        t, cpu = time.perf_counter(), time.process_time()
        statuses = list(pool.map(post, bodies, chunksize=64))
        dt = time.perf_counter() - t
    CPU["baseline"].append((time.process_time() - cpu) / len(bodies))
    assert all(s == 200 for s in statuses)
    return len(bodies) / dt


def project(db_url: str, n: int, per_target: int) -> float:
    """``Dispatcher.run`` until ``n`` deliveries are recorded delivered; deliveries/s."""
    from connectors.dispatch import Dispatcher
    from connectors.outbound import OutboundGuard
    from connectors.webhooks import WebhookSender

    stop = threading.Event()
    with WebhookSender(OutboundGuard.allowing(["127.0.0.1/32"])) as sender:
        d = Dispatcher(db_url, (60.0,), sender, timeout=10.0, per_target=per_target, poll_s=0.05)
        runner = threading.Thread(target=d.run, args=(stop,))
        t, cpu = time.perf_counter(), time.process_time()
        runner.start()
        while d.writer.counts.delivered < n:
            time.sleep(0.01)
            if not runner.is_alive():
                raise RuntimeError("the dispatcher stopped")
        dt = time.perf_counter() - t
        CPU["project"].append((time.process_time() - cpu) / n)
        stop.set()
        runner.join()
    assert d.writer.counts.sent == n, vars(d.writer.counts)
    return n / dt


def clients(port: int, n: int = 2000) -> None:
    """CPU per POST of three clients against the same receiver, one connection each."""
    import http.client

    import httpcore
    import httpx

    url, body = f"http://127.0.0.1:{port}/hooks", b'{"type":"job.succeeded","data":{}}' * 20
    headers = {"content-type": "application/json", "webhook-id": "msg_1"}
    hx, pool, hc = httpx.Client(), httpcore.ConnectionPool(), http.client.HTTPConnection("127.0.0.1", port)

    def one_hc() -> None:
        hc.request("POST", "/hooks", body=body, headers=headers)
        hc.getresponse().read()

    for name, call in (("httpx.Client", lambda: hx.post(url, content=body, headers=headers)),
                       ("httpcore pool", lambda: pool.request("POST", url, content=body, headers=headers)),
                       ("http.client", one_hc)):
        for _ in range(100):
            call()
        t = time.process_time()
        for _ in range(n):
            call()
        print(f"  {name:<14} {(time.process_time() - t) / n * 1e6:6.0f} us CPU per POST")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deliveries", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-target", type=int, default=4)
    ap.add_argument("--fanned", action="store_true", help="fan out before the clock starts (fan-out excluded)")
    ap.add_argument("--clients", action="store_true")
    a = ap.parse_args()
    server = os.environ.get("VLWATCH_TEST_PG_URL")
    if not server:
        from tests import stack
        server = stack.up(["postgres"])["VLWATCH_TEST_PG_URL"]
    db_url = fresh_database(server, "vlwatch_bench_webhooks")
    from connectors.webhooks import new_secret
    from services.migrate import upgrade

    upgrade(db_url)
    rx = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(rx.stdout.readline())
        if a.clients:
            clients(port)
        secret = new_secret()
        base, proj = [], []
        for _ in range(a.rounds):
            bodies = prepare(db_url, a.deliveries, f"http://127.0.0.1:{port}/hooks", secret, fanned=True)
            base.append(baseline(port, secret, bodies, a.per_target))
            prepare(db_url, a.deliveries, f"http://127.0.0.1:{port}/hooks", secret, fanned=a.fanned)
            proj.append(project(db_url, a.deliveries, a.per_target))
        b, p = statistics.median(base), statistics.median(proj)
        ratios = [y / x for x, y in zip(base, proj)]  # each round's pair ran back to back, under the same load
        print(f"keep-alive signing loop  {b:7.0f} deliveries/s   (rounds: {', '.join(f'{x:.0f}' for x in base)})")
        print(f"dispatcher               {p:7.0f} deliveries/s   (rounds: {', '.join(f'{x:.0f}' for x in proj)})")
        print("CPU of this process per delivery: " + ", ".join(
            f"{k} {statistics.median(v) * 1e6:.0f} us" for k, v in CPU.items()))
        print(f"ratio {statistics.median(ratios):.2f}   (median of the rounds' ratios "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; {a.deliveries} deliveries a round, {a.per_target} "
              f"connections, fan-out {'excluded' if a.fanned else 'included'})")
    finally:
        rx.kill()
        rx.wait()


if __name__ == "__main__":
    main()
