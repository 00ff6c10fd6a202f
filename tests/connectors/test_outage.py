"""`vlwatch dispatch --watch` rides out a PostgreSQL crash (immediate-mode stop, down a while, started again)
in the middle of delivering: it stays up, logs the outage and its end, and delivers every event, those emitted
after the restart too. The cluster is one of this test's own (tests/stack.py), so the suites that share the
stack's PostgreSQL are not disturbed."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from connectors.dispatch import pending_deliveries
from connectors.webhooks import add_subscription
from services.db import session_scope
from tests import stack
from tests.connectors.outbox import emit_n, watching_dispatcher
from tests.connectors.test_isolation import SlowReceiver
from tests.waiting import wait_for

pytestmark = [pytest.mark.services, pytest.mark.slow]
CLUSTER, PORT = "postgres-outage", 55433


@pytest.fixture(scope="module")
def outage_db(session_tag: str) -> Iterator[str]:
    """A fresh, migrated database on a cluster of the test's own; dropped at the end."""
    import psycopg

    from services.db import dispose_all
    from services.migrate import upgrade

    try:
        stack.start_postgres(PORT, stack.STACK / CLUSTER, durable=True)  # a crash loses no acknowledged commit
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
    stack.stop_postgres(stack.STACK / CLUSTER)  # the port is free for the next run, from whatever checkout


def test_the_dispatcher_rides_out_a_postgresql_crash(outage_db: str, tmp_path: Path):
    rx = SlowReceiver(delay=0.02)
    with session_scope(outage_db) as s:
        add_subscription(s, "rx", rx.url, ["*"])
    first = emit_n(outage_db, 300)
    try:
        with watching_dispatcher(outage_db, tmp_path, dispatch_interval_seconds="0.2", reconcile_interval_seconds="1",
                                 delivery_lease_seconds="10") as (proc, log):
            wait_for(lambda: len(rx.hits) >= 50 or proc.poll() is not None, 60, "deliveries to begin")
            stack.restart_postgres(stack.STACK / CLUSTER, PORT, down_for=3.0, durable=True)  # mid-delivery: claims, records and fan-out all fail a while
            assert proc.poll() is None, log.read_text()
            later = emit_n(outage_db, 20)

            def all_delivered() -> bool:
                with session_scope(outage_db) as s:
                    return pending_deliveries(s) == 0

            wait_for(all_delivered, 90, "every delivery after the restart")
            assert proc.poll() is None, log.read_text()
    finally:
        rx.close()
    assert set(rx.hits) == set(first) | set(later)  # nothing lost (a delivery cut by the crash may repeat)
    text = log.read_text()
    assert "failed; trying again with backoff" in text and "works again after" in text, text[-3000:]
