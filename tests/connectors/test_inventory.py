"""Inventory connector on real PostgreSQL and MariaDB: extraction, needs_review, idempotent order-free upserts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import select, text

from connectors.inventory import InventoryConnector, Location, observations, stock

pytestmark = pytest.mark.services

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=timezone.utc)


def _payload(image_id: int, minutes: int, barcodes=(), texts=(), labels=()) -> dict:  # noqa: ANN001
    def row(i: int, **kw) -> dict:  # noqa: ANN003
        return {"x1": 10.0 * i, "y1": 0.0, "x2": 10.0 * i + 8, "y2": 8.0, "score": 0.9, **kw}
    return {"type": "job.succeeded", "timestamp": (T0 + timedelta(minutes=minutes)).isoformat(),
            "data": {"image": {"id": image_id, "bucket": "b", "key": f"k/{image_id}.jpg", "etag": "e",
                               "source": "cam1", "width": 100, "height": 100, "sha256": "0"},
                     "results": {"barcodes": [row(i, value=v, format="EAN13") for i, v in barcodes],
                                 "text_lines": [row(i, text=t) for i, t in texts],
                                 "objects": [row(i, label=lab) for i, lab in labels]},
                     "job": {"id": image_id}}}


@pytest.fixture(params=["pg", "mariadb"])
def target(request) -> InventoryConnector:  # noqa: ANN001
    url = request.getfixturevalue("pg_url" if request.param == "pg" else "mariadb_url")
    if request.param == "mariadb" and url.startswith("mysql://"):
        url = "mysql+pymysql://" + url[len("mysql://"):]
    c = InventoryConnector("inv", url, locations={"cam1": Location("S1", "A3", "B7")},
                           sku_patterns=[r"\bSKU-(\d{4})\b"])
    c.migrate()
    with c.engine.begin() as conn:
        conn.execute(text("DELETE FROM inventory_observations"))
        conn.execute(text("DELETE FROM inventory_stock"))
    yield c
    c.engine.dispose()


def _snapshot(c: InventoryConnector) -> tuple[list, list]:
    with c.engine.connect() as conn:
        o = conn.execute(select(observations).order_by(*observations.primary_key.columns)).all()
        s = conn.execute(select(stock).order_by(*stock.primary_key.columns)).all()
    drop_o = [tuple(v for k, v in r._mapping.items() if k != "seen_at") for r in o]
    drop_s = [tuple(v for k, v in r._mapping.items() if k != "last_seen_at") for r in s]
    return drop_o, drop_s


def test_extraction_counts_and_review() -> None:
    c = InventoryConnector("inv", "sqlite://", sku_patterns=[r"\bSKU-(\d{4})\b"])
    # barcode 0001 and OCR 9999 read overlapping boxes (index 0): needs_review; OCR 0002 elsewhere is clean
    obs = c.observations(_payload(1, 0, barcodes=[(0, "0001")], texts=[(0, "SKU-9999"), (5, "SKU-0002")],
                                  labels=[(1, "box"), (2, "box"), (3, "pallet")])["data"])
    got = {(o.kind, o.code): (o.quantity, o.needs_review) for o in obs}
    assert got == {("barcode", "0001"): (1, True), ("sku", "9999"): (1, True), ("sku", "0002"): (1, False),
                   ("count", "box"): (2, False), ("count", "pallet"): (1, False)}
    same = c.observations(_payload(1, 0, barcodes=[(0, "0001")], texts=[(0, "SKU-0001")])["data"])
    assert not any(o.needs_review for o in same)


def test_upsert_idempotent_and_latest_wins(target: InventoryConnector) -> None:
    a = ("e1", _payload(1, 0, barcodes=[(0, "0001")], labels=[(1, "box")]))
    b = ("e2", _payload(2, 5, barcodes=[(0, "0001"), (3, "0001")]))
    target.apply([b])
    target.apply([a])  # older sighting arrives late: stock keeps image 2
    target.apply([a, b])
    with target.engine.connect() as conn:
        rows = conn.execute(select(stock)).mappings().all()
    assert len(rows) == 1
    assert (rows[0]["site"], rows[0]["aisle"], rows[0]["bay"], rows[0]["sku"]) == ("S1", "A3", "B7", "0001")
    assert rows[0]["image_id"] == 2 and rows[0]["quantity"] == 2 and rows[0]["image_key"] == "k/2.jpg"
    obs, _ = _snapshot(target)
    assert len(obs) == 3  # (1, barcode 0001), (1, count box), (2, barcode 0001)


EVENTS = [(f"e{i}", _payload(i, m, barcodes=[(0, code)], texts=[(1, f"SKU-{code}")], labels=[(2, "box")]))
          for i, m, code in [(1, 0, "0001"), (2, 3, "0001"), (3, 3, "0002"), (4, 9, "0002"), (5, 1, "0003")]]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(range(len(EVENTS))), min_size=len(EVENTS), max_size=12).filter(
    lambda xs: set(xs) == set(range(len(EVENTS)))), st.integers(1, 4))
def test_any_interleaving_same_rows(target: InventoryConnector, order: list[int], batch: int) -> None:
    for t in ("inventory_observations", "inventory_stock"):
        with target.engine.begin() as conn:
            conn.execute(text(f"DELETE FROM {t}"))
    target.apply(EVENTS)
    want = _snapshot(target)
    for t in ("inventory_observations", "inventory_stock"):
        with target.engine.begin() as conn:
            conn.execute(text(f"DELETE FROM {t}"))
    seq = [EVENTS[i] for i in order]
    for start in range(0, len(seq), batch):  # deliveries in batches of `batch` events
        target.apply(seq[start:start + batch], batched=batch % 2 == 0)
    assert _snapshot(target) == want


def test_a_catastrophic_pattern_runs_in_linear_time_on_a_crafted_line() -> None:
    """``^(\\w+\\s?)+$`` takes seconds on a 27-character line with backtracking regexes, doubling per character;
    RE2 is linear. Run in a child process so that a backtracking engine fails the test instead of stalling it."""
    import subprocess
    import sys

    code = (
        "import time, json\n"
        "from connectors.inventory import InventoryConnector\n"
        "c = InventoryConnector('inv', 'postgresql+psycopg://x@h/db', sku_patterns=[r'^(\\w+\\s?)+$'])\n"
        "lines = ['a' * n + '!' for n in (27, 40, 1999)] + ['b' * 100_000]\n"
        "t = time.perf_counter()\n"
        "found = [c._codes(line) for line in lines]\n"
        "print(json.dumps([time.perf_counter() - t, [len(f) for f in found]]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    import json

    took, found = json.loads(proc.stdout)
    assert took < 1.0 and found == [0, 0, 0, 1]  # the 100,000-character line is capped, then matches


def test_a_pattern_re2_cannot_compile_is_a_config_error_naming_the_field() -> None:
    from services.config import ConfigError, parse_config

    text = ("connectors:\n  stock: {kind: inventory, url: 'postgresql+psycopg://inv@db/inventory',\n"
            "          sku_patterns: ['SKU-(\\d{6})', '(\\w)\\1']}\n")
    with pytest.raises(ConfigError, match=r"connectors\.stock\.sku_patterns: \[1\] .*RE2.*backreferences"):
        parse_config(text, "site.yaml")
    good = parse_config(text.replace(", '(\\w)\\1'", ""), "site.yaml")
    c = InventoryConnector("stock", good.connectors["stock"].url, sku_patterns=good.connectors["stock"].sku_patterns)
    assert c._codes("SKU-123456 and SKU-654321") == ["123456", "654321"]
