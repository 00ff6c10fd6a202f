"""`vlwatch dispatch --watch` rides out a PostgreSQL crash (immediate-mode stop, down a while, started again)
in the middle of delivering: it stays up, logs the outage and its end, and delivers every event, those emitted
after the restart too. The cluster is one of this test's own (tests/stack.py), so the suites that share the
stack's PostgreSQL are not disturbed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from connectors.dispatch import pending_deliveries
from connectors.webhooks import add_subscription
from services.db import session_scope
from tests import stack
from tests.connectors.outbox import emit_n
from tests.connectors.test_isolation import SlowReceiver
from tests.waiting import wait_for

pytestmark = [pytest.mark.services, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
CLUSTER, PORT = "postgres-outage", 55433


@pytest.fixture(scope="module")
def outage_db(session_tag: str) -> Iterator[str]:
    """A fresh, migrated database on a cluster of the test's own; dropped at the end."""
    import psycopg

    from services.db import dispose_all
    from services.migrate import upgrade

    try:
        stack.start_postgres(CLUSTER, PORT, durable=True)  # a crash loses no acknowledged commit
    except stack.StackError as exc:
        pytest.fail(f"cannot start a PostgreSQL cluster of the test's own: {exc}", pytrace=False)
    name = f"o_{session_tag}"

    def admin(sql: str) -> None:  # a connection of its own each time: the cluster restarts in between
        with psycopg.connect(host=stack.HOST, port=PORT, user="postgres", dbname="postgres", autocommit=True) as c:
            c.execute(sql)

    admin(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@{stack.HOST}:{PORT}/{name}"
    upgrade(url)
    yield url
    dispose_all()
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_dispatcher_rides_out_a_postgresql_crash(outage_db: str, tmp_path: Path):
    rx = SlowReceiver(delay=0.02)
    with session_scope(outage_db) as s:
        add_subscription(s, "rx", rx.url, ["*"])
    first = emit_n(outage_db, 300)
    env = {**os.environ, "VLWATCH_DATABASE_URL": outage_db, "VLWATCH_OUTBOUND_ALLOW": "127.0.0.0/8",
           "VLWATCH_DATA_DIR": str(tmp_path), "VLWATCH_DISPATCH_INTERVAL_SECONDS": "0.2",
           "VLWATCH_RECONCILE_INTERVAL_SECONDS": "1", "VLWATCH_DELIVERY_LEASE_SECONDS": "10"}
    env.pop("VLWATCH_CONFIG", None)
    log = tmp_path / "dispatch.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services", "dispatch", "--watch"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(rx.hits) >= 50 or proc.poll() is not None, 60, "deliveries to begin")
        stack.restart(CLUSTER, down_for=3.0)  # mid-delivery: claims, records and fan-out all fail for a while
        assert proc.poll() is None, log.read_text()
        later = emit_n(outage_db, 20)

        def all_delivered() -> bool:
            with session_scope(outage_db) as s:
                return pending_deliveries(s) == 0

        wait_for(all_delivered, 90, "every delivery after the restart")
        assert proc.poll() is None, log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)
        rx.close()
    assert set(rx.hits) == set(first) | set(later)  # nothing lost (a delivery cut by the crash may repeat)
    text = log.read_text()
    assert "failed; trying again with backoff" in text and "works again after" in text, text[-3000:]
