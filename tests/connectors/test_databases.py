"""Connectors run from the outbox (vlwatch's own database on PostgreSQL; targets on PostgreSQL and MariaDB):
fan-out makes one delivery per connector, a target that is down keeps its events pending and catches up, a
rejected event dead-letters with the database's message while the rest go through, replay re-delivers without
changing the target's rows, and a connector added later gets earlier events by replay."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from connectors.databases import replay, status, sync_connectors
from connectors.dispatch import dispatch_once, fan_out
from connectors.inventory import InventoryConnector, Location
from connectors.lifecycle import RetrySchedule
from services.db import session_scope
from services.schema import ConnectorDelivery, OutboxEvent, utcnow
from tests.connectors.outbox import drain, emit
from tests.connectors.tcpproxy import TcpProxy, closed_port

pytestmark = pytest.mark.services

FAST = RetrySchedule((0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), jitter=0.0)


@pytest.fixture(params=["pg", "mariadb"])
def target_url(request) -> str:  # noqa: ANN001
    u = request.getfixturevalue("pg_url" if request.param == "pg" else "mariadb_url")
    return "mysql+pymysql://" + u[len("mysql://"):] if u.startswith("mysql://") else u


def _inventory(url: str) -> InventoryConnector:
    c = InventoryConnector("inv", url, locations={"cam1": Location("S1", "A3", "B7")},
                           sku_patterns=[r"\bSKU-(\d{4})\b"])
    return c


def _clean(url: str) -> None:
    c = _inventory(url)
    c.migrate()
    with c.engine.begin() as conn:
        conn.execute(text("DELETE FROM inventory_observations"))
        conn.execute(text("DELETE FROM inventory_stock"))
    c.engine.dispose()


def _data(image_id: int, code: str, minute: int = 0) -> dict:
    box = {"x1": 1.0, "y1": 1.0, "x2": 9.0, "y2": 9.0, "score": 1.0}
    return {"image": {"id": image_id, "bucket": "b", "key": f"cam1/{image_id}.png", "source": "cam1",
                      "width": 100, "height": 100, "captured_at": None,
                      "uploaded_at": f"2026-11-25T08:{minute:02d}:00Z"},
            "results": {"barcodes": [{**box, "format": "Code128", "value": code}], "text_lines": [], "objects": []},
            "job": {"id": image_id}}


def _behind_proxy(url: str) -> tuple[TcpProxy, InventoryConnector]:
    """A connector whose target is reached through a proxy the test takes down and brings back (not started)."""
    real = make_url(url)
    proxy = TcpProxy(real.host or "127.0.0.1", real.port or 5432)
    return proxy, _inventory(real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))


def _rows(url: str) -> tuple[list, list]:
    c = _inventory(url)
    with c.engine.connect() as conn:
        obs = conn.execute(text("SELECT image_id, kind, code, quantity, needs_review, site, event_id "
                                "FROM inventory_observations ORDER BY image_id, kind, code")).all()
        st = conn.execute(text("SELECT site, aisle, bay, sku, quantity, image_id, last_seen_at "
                               "FROM inventory_stock ORDER BY sku")).all()
    c.engine.dispose()
    return [tuple(r) for r in obs], [tuple(r) for r in st]


def _states(db_url: str) -> dict[str, int]:
    with session_scope(db_url) as s:
        return dict(s.execute(select(ConnectorDelivery.status, func.count()).group_by(ConnectorDelivery.status)).all())


def test_events_reach_the_target_once_and_replay_changes_nothing(db_url: str, target_url: str) -> None:
    _clean(target_url)
    with session_scope(db_url) as s:
        sync_connectors(s, {"inv": "inventory"})
    emit(db_url, [("job.succeeded", _data(1, "0001", 1)), ("job.succeeded", _data(2, "0002", 2)),
                   ("job.failed", {"image": {"id": 3}, "job": {"id": 3, "error": "bad"}})])
    conn = _inventory(target_url)
    drain(db_url, FAST, {"inv": conn})
    assert _states(db_url) == {"delivered": 2}  # job.failed makes no connector delivery
    obs, stock = _rows(target_url)
    assert [(r[0], r[2], r[5]) for r in obs] == [(1, "0001", "S1"), (2, "0002", "S1")]
    assert [r[3] for r in stock] == ["0001", "0002"]

    t0 = utcnow() - timedelta(hours=1)
    with session_scope(db_url) as s:
        assert replay(s, since=t0) == 2
    drain(db_url, FAST, {"inv": conn})
    assert _rows(target_url) == (obs, stock)  # re-delivered, nothing changed
    with session_scope(db_url) as s:
        [st] = status(s)
    assert (st.name, st.delivered, st.pending, st.dead) == ("inv", 2, 0, 0)
    conn.engine.dispose()


def test_target_down_then_back_loses_nothing_and_a_rejected_event_dead_letters(db_url: str,
                                                                               target_url: str) -> None:
    _clean(target_url)
    proxy, conn = _behind_proxy(target_url)
    with session_scope(db_url) as s:
        sync_connectors(s, {"inv": "inventory"})
    ids = emit(db_url, [("job.succeeded", _data(i, f"{i:04d}", i)) for i in range(1, 6)]
                + [("job.succeeded", _data(9, "X" * 300, 9))])  # longer than the code column: rejected
    sched = RetrySchedule((0.0,) * 20, jitter=0.0)
    for _ in range(3):  # the target is down: every round fails to connect, nothing is lost
        c = dispatch_once(db_url, sched, timeout=5, connectors={"inv": conn})
        assert c.delivered == 0 and c.dead == 0 and c.retrying == 6
    with session_scope(db_url) as s:
        rows = s.execute(select(ConnectorDelivery.status, ConnectorDelivery.attempts,
                                ConnectorDelivery.last_error)).all()
        [st] = status(s)
    assert {(r.status, r.attempts) for r in rows} == {("pending", 3)}
    assert st.pending == 6 and st.last_error and ("connect" in st.last_error.lower() or "refused" in st.last_error)

    proxy.start()  # the database is back
    try:
        drain(db_url, FAST, {"inv": conn})
        with session_scope(db_url) as s:
            dead = s.execute(select(OutboxEvent.event_id, ConnectorDelivery.last_error)
                             .join(OutboxEvent, OutboxEvent.id == ConnectorDelivery.event_id)
                             .where(ConnectorDelivery.status == "dead")).all()
            [st] = status(s)
            assert [event_id for event_id, _ in dead] == [ids[-1]]
            assert "long" in (dead[0].last_error or "").lower()  # the database's own message
        assert (st.delivered, st.dead, st.pending) == (5, 1, 0)
        obs, _ = _rows(target_url)
        assert sorted(r[2] for r in obs) == [f"{i:04d}" for i in range(1, 6)]

        # Down in the middle of normal operation: open connections are cut, the next round retries.
        proxy.stop()
        emit(db_url, [("job.succeeded", _data(6, "0006", 6))])
        c = dispatch_once(db_url, sched, timeout=5, connectors={"inv": conn})
        assert c.retrying == 1 and c.delivered == 0
        proxy.start()
        drain(db_url, FAST, {"inv": conn})
        obs, _ = _rows(target_url)
        assert sorted(r[2] for r in obs) == [f"{i:04d}" for i in range(1, 7)]
    finally:
        proxy.stop()
        conn.engine.dispose()


def test_schedule_exhausted_while_down_dead_letters_and_replay_recovers(db_url: str, target_url: str) -> None:
    _clean(target_url)
    proxy, conn = _behind_proxy(target_url)
    with session_scope(db_url) as s:
        sync_connectors(s, {"inv": "inventory"})
    t0 = utcnow() - timedelta(seconds=1)
    emit(db_url, [("job.succeeded", _data(1, "0001")), ("job.succeeded", _data(2, "0002"))])
    two = RetrySchedule((0.0,), jitter=0.0)  # one retry, then dead
    dispatch_once(db_url, two, timeout=5, connectors={"inv": conn})
    c = dispatch_once(db_url, two, timeout=5, connectors={"inv": conn})
    assert c.dead == 2 and _states(db_url) == {"dead": 2}
    proxy.start()
    try:
        with session_scope(db_url) as s:
            assert replay(s, since=t0, status=("dead",)) == 2
        drain(db_url, FAST, {"inv": conn})
        assert _states(db_url) == {"delivered": 2}
        assert len(_rows(target_url)[0]) == 2
    finally:
        proxy.stop()
        conn.engine.dispose()


def test_connector_added_later_gets_earlier_events_by_replay_and_a_removed_one_gets_none(
        db_url: str, target_url: str) -> None:
    _clean(target_url)
    t0 = utcnow() - timedelta(seconds=1)
    emit(db_url, [("job.succeeded", _data(1, "0001")), ("job.succeeded", _data(2, "0002"))])
    with session_scope(db_url) as s:
        fan_out(s)  # no connector yet: the events are dispatched without connector deliveries
    assert _states(db_url) == {}
    with session_scope(db_url) as s:
        sync_connectors(s, {"inv": "inventory"})
        assert replay(s, since=t0) == 2
        assert replay(s, since=utcnow() + timedelta(hours=1)) == 0  # nothing since then
    conn = _inventory(target_url)
    drain(db_url, FAST, {"inv": conn})
    assert [r[2] for r in _rows(target_url)[0]] == ["0001", "0002"]

    with session_scope(db_url) as s:
        sync_connectors(s, {})  # removed from the YAML file: history kept, no new deliveries
    emit(db_url, [("job.succeeded", _data(3, "0003"))])
    dispatch_once(db_url, FAST, timeout=5, connectors={})
    with session_scope(db_url) as s:
        [st] = status(s)
        assert not st.active and st.delivered == 2 and st.pending == 0
        with pytest.raises(ValueError, match="inv"):
            replay(s, since=t0, connector="inv")
    conn.engine.dispose()


SITE = """
profiles:
  dock: {analyzers: [vl2-ground], phrases: [forklift, person]}
sources:
  dock-cam: {prefix: "dock/", profile: dock}
zones:
  door: {source: dock-cam, points: [[0, 0], [0.5, 0], [0.5, 1], [0, 1]], normalised: true}
rules:
  forklift-at-door: {labels: [forklift], zones: [door], min_score: 0.5, cooldown_seconds: 60, severity: high}
connectors:
  guard: {kind: security, url: "%s", timezone: Europe/Berlin, snapshot_lifetime_seconds: 600}
"""


def test_security_connector_from_the_yaml_file_runs_from_the_outbox(db_url: str, target_url: str,
                                                                     s3_settings) -> None:  # noqa: ANN001
    import httpx

    from connectors.registry import build_connectors
    from services.config import parse_config
    from services.storage import S3Store

    store = S3Store(s3_settings.endpoint, s3_settings.access_key, s3_settings.secret_key, s3_settings.bucket)
    store.put("security-test/frame-1.jpg", b"frame-1 bytes")  # outside the prefixes other tests scan
    guard = build_connectors(parse_config(SITE % target_url), store)["guard"]
    guard.migrate()
    with guard.engine.begin() as conn:
        conn.execute(text("DELETE FROM security_events"))

    def frame(image_id: int, second: int, x: float) -> dict:
        det = {"label": "forklift", "x1": x, "y1": 10.0, "x2": x + 20, "y2": 30.0, "score": 0.9}
        return {"image": {"id": image_id, "bucket": s3_settings.bucket, "key": f"security-test/frame-{image_id}.jpg",
                          "source": "dock-cam", "width": 200, "height": 100,
                          "captured_at": f"2026-11-25T21:00:{second:02d}Z", "uploaded_at": None},
                "results": {"objects": [det], "text_lines": [], "barcodes": []}, "job": {"id": image_id}}

    with session_scope(db_url) as s:
        sync_connectors(s, {"guard": "security"})
    # Frame 1: forklift in the door zone. Frame 2: again, 10 s later (cool-down). Frame 3: outside the zone.
    emit(db_url, [("job.succeeded", frame(2, 10, 20.0)), ("job.succeeded", frame(1, 0, 20.0)),
                   ("job.succeeded", frame(3, 5, 150.0))])
    drain(db_url, FAST, {"guard": guard})
    assert _states(db_url) == {"delivered": 3}
    with guard.engine.connect() as conn:
        rows = conn.execute(text("SELECT rule, zone, label, image_id, severity, image_key, snapshot_url "
                                 "FROM security_events")).all()
    assert [(r.rule, r.zone, r.label, r.image_id, r.severity) for r in rows] == [
        ("forklift-at-door", "door", "forklift", 1, "high")]  # the earliest frame of the cool-down slot
    assert httpx.get(rows[0].snapshot_url).content == b"frame-1 bytes"  # a working presigned link
    assert "X-Amz-Expires=600" in rows[0].snapshot_url
    guard.engine.dispose()


def test_check_names_what_is_wrong_with_a_target(pg_url: str) -> None:
    from connectors.health import check_target

    admin = create_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS legacy CASCADE"))
        conn.execute(text("CREATE SCHEMA legacy"))
        conn.execute(text("CREATE TABLE legacy.security_events (rule text, zone text, label text)"))
    admin.dispose()
    legacy = make_url(pg_url).update_query_dict({"options": "-csearch_path=legacy"}).render_as_string(False)
    problem = check_target("security", legacy)
    assert problem and "table security_events lacks column(s)" in problem and "dedupe_key" in problem
    assert "inventory_observations, inventory_stock missing" in (check_target("inventory", legacy) or "")
    down = make_url(pg_url).set(port=closed_port()).render_as_string(False)
    assert (check_target("inventory", down, timeout=2) or "").startswith("cannot connect to postgresql")
    _clean(pg_url)  # the inventory tables exist in the public schema
    assert check_target("inventory", pg_url) is None
