"""Inventory connector throughput: events/s into PostgreSQL and MariaDB, batched multi-row upserts against one
row per statement, in the same run; prints the ratio.

    python bench/connectors.py [--events 2000] [--batch 200]

Targets come from VLWATCH_TEST_PG_URL / VLWATCH_TEST_MARIADB_URL (server URLs), else the test stack is started
(tests/stack.py). A fresh database ``vlwatch_bench`` is made on each server.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from connectors.inventory import InventoryConnector, Location  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _event(i: int) -> tuple[str, dict]:
    box = {"x1": 0.0, "y1": 0.0, "x2": 8.0, "y2": 8.0, "score": 0.9}
    return f"e{i}", {"type": "job.succeeded", "timestamp": (T0 + timedelta(seconds=i)).isoformat(),
                     "data": {"image": {"id": i, "bucket": "b", "key": f"k/{i}.jpg", "source": f"cam{i % 20}"},
                              "results": {"barcodes": [{**box, "value": f"{i % 500:06d}"}],
                                          "text_lines": [{**box, "text": f"SKU-{i % 300:04d}"}],
                                          "objects": [{**box, "label": "box"}, {**box, "label": "pallet"}]}}}


def fresh_database(server: str, name: str = "vlwatch_bench") -> str:
    """The URL of database ``name`` on ``server``, dropped and made anew."""
    url = make_url(server)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        c.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def run(url: str, events: list, batch: int, batched: bool) -> float:
    c = InventoryConnector("bench", url, locations={f"cam{k}": Location("S", f"A{k}", "B1") for k in range(20)},
                           sku_patterns=[r"\bSKU-(\d{4})\b"])
    c.migrate()
    with c.engine.begin() as conn:
        conn.execute(text("DELETE FROM inventory_observations"))
        conn.execute(text("DELETE FROM inventory_stock"))
    t = time.perf_counter()
    for k in range(0, len(events), batch):
        c.apply(events[k:k + batch], batched=batched)
    dt = time.perf_counter() - t
    c.engine.dispose()
    return len(events) / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=200)
    a = ap.parse_args()
    env = dict(os.environ)
    if "VLWATCH_TEST_PG_URL" not in env or "VLWATCH_TEST_MARIADB_URL" not in env:
        from tests import stack
        env.update(stack.up(["postgres", "mariadb"]))
    events = [_event(i) for i in range(a.events)]
    for name, var in (("PostgreSQL", "VLWATCH_TEST_PG_URL"), ("MariaDB", "VLWATCH_TEST_MARIADB_URL")):
        url = fresh_database(env[var])
        single = run(url, events, a.batch, batched=False)
        multi = run(url, events, a.batch, batched=True)
        print(f"{name:10s} batched {multi:8.0f} events/s   row-per-statement {single:8.0f} events/s   "
              f"ratio {multi / single:.1f}x   ({a.events} events, {a.batch} per transaction, 4 rows + stock each)")


if __name__ == "__main__":
    main()
