"""Security connector on real PostgreSQL and MariaDB: zones, windows in the site's zone, cool-down slots,
idempotent and order-free writes (hypothesis: any interleaving of duplicate and reordered deliveries)."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from typing import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import select, text

from connectors.security import Rule, SecurityConnector, Zone, events
from services.storage import S3Store

pytestmark = pytest.mark.services

T0 = datetime(2026, 1, 1, 22, 0, tzinfo=timezone.utc)  # 23:00 in Europe/Berlin; a multiple of 300 s since the epoch
INSIDE, INSIDE2, OUTSIDE = (10, 10, 50, 90), (60, 20, 80, 60), (150, 10, 190, 90)  # centres x=30, x=70, x=170
YARD = [Zone("yard", "gate", [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)], normalised=True)]  # left half


def _payload(image_id: int, minutes: float, dets: list[tuple[str, float, tuple]]) -> dict:
    return {"type": "job.succeeded", "timestamp": (T0 + timedelta(minutes=minutes)).isoformat(),
            "data": {"image": {"id": image_id, "bucket": "b", "key": f"cam/{image_id}.jpg", "source": "gate",
                               "width": 200, "height": 100},
                     "results": {"objects": [{"label": lab, "score": sc, "x1": b[0], "y1": b[1], "x2": b[2],
                                              "y2": b[3]} for lab, sc, b in dets], "text_lines": [], "barcodes": []}}}


def _connector(url: str, links: S3Store, rules: list[Rule] | None = None) -> SecurityConnector:
    rules = rules or [Rule("night-person", ["person"], ["yard"], windows=[(time(22, 0), time(6, 0))],
                           min_score=0.5, cooldown_s=300, severity="high")]
    return SecurityConnector("sec", url, YARD, rules, timezone="Europe/Berlin", store=links,
                             link_lifetime=timedelta(minutes=15))


@pytest.fixture(params=["pg", "mariadb"])
def url(request) -> str:  # noqa: ANN001
    u = request.getfixturevalue("pg_url" if request.param == "pg" else "mariadb_url")
    return "mysql+pymysql://" + u[len("mysql://"):] if u.startswith("mysql://") else u


@pytest.fixture
def links(s3_settings) -> S3Store:  # noqa: ANN001
    return S3Store(s3_settings.endpoint, s3_settings.access_key, s3_settings.secret_key, s3_settings.bucket)


def _utc(v: datetime) -> datetime:
    return v if v.tzinfo else v.replace(tzinfo=timezone.utc)  # MariaDB DATETIME holds UTC without a zone


def _clear(c: SecurityConnector) -> None:
    with c.engine.begin() as conn:
        conn.execute(text("DELETE FROM security_events"))


def _rows(c: SecurityConnector, with_links: bool = False) -> list[tuple]:
    with c.engine.connect() as conn:
        rows = conn.execute(select(events).order_by(*events.primary_key.columns)).mappings().all()
    return [tuple(v for k, v in r.items() if with_links or k != "snapshot_url") for r in rows]


@pytest.fixture
def target(url: str, links: S3Store) -> Iterator[SecurityConnector]:
    c = _connector(url, links)
    c.migrate()
    _clear(c)
    yield c
    c.engine.dispose()


def test_zone_window_score_cooldown_idempotent(target: SecurityConnector, links: S3Store) -> None:
    links.put("cam/1.jpg", b"jpeg-bytes-1")
    batch = [("e1", _payload(1, 0, [("person", 0.9, INSIDE), ("person", 0.9, OUTSIDE), ("person", 0.3, INSIDE),
                                     ("car", 0.9, INSIDE)])),
             ("e2", _payload(2, 2, [("person", 0.9, INSIDE)])),     # same 5-minute slot: suppressed
             ("e3", _payload(3, 6, [("person", 0.8, INSIDE)])),     # next slot: raised
             ("e4", _payload(4, 60 * 9, [("person", 0.9, INSIDE)]))]  # 08:00 Berlin: outside the window
    assert target.apply(batch) == 3  # candidates: e1 (inside, score, label), e2, e3
    first = _rows(target, with_links=True)
    assert target.apply(batch) == 3
    assert target.apply(list(reversed(batch))) == 3
    assert _rows(target, with_links=True) == first  # re-delivery changes nothing, links included
    with target.engine.connect() as conn:
        rows = conn.execute(select(events).order_by(events.c.image_id)).mappings().all()
    assert [(r["image_id"], r["label"], r["severity"], r["box"], r["dedupe_key"], r["event_id"]) for r in rows] == [
        (1, "person", "high", "10.0,10.0,50.0,90.0", f"person|{int(T0.timestamp()) // 300}", "e1"),
        (3, "person", "high", "10.0,10.0,50.0,90.0", f"person|{int(T0.timestamp()) // 300 + 1}", "e3")]
    assert _utc(rows[0]["captured_at"]) == T0
    snap = rows[0]["snapshot_url"]
    assert "X-Amz-Expires=900" in snap  # the bounded lifetime
    assert httpx.get(snap).content == b"jpeg-bytes-1"


def test_late_earlier_event_replaces_and_slots_are_fixed(target: SecurityConnector) -> None:
    late = ("e2", _payload(2, 2, [("person", 0.7, INSIDE)]))
    early = ("e1", _payload(1, 1, [("person", 0.9, INSIDE2)]))
    target.apply([late])
    target.apply([early])  # arrives after a later capture of the same slot: it is the event kept
    (row,) = _rows(target, with_links=True)
    assert row[events.c.keys().index("image_id")] == 1 and row[events.c.keys().index("event_id")] == "e1"
    assert "cam/1.jpg" in row[events.c.keys().index("snapshot_url")]
    target.apply([late])  # and a re-delivery of the later one does not take it back
    assert _rows(target, with_links=True) == [row]
    # Slots are fixed in time: 04:59 and 05:01 after a slot start fall in two slots, both raise an event.
    _clear(target)
    target.apply([("a", _payload(1, 4 + 59 / 60, [("person", 0.9, INSIDE)])),
                  ("b", _payload(2, 5 + 1 / 60, [("person", 0.9, INSIDE)]))])
    assert [r[events.c.keys().index("image_id")] for r in _rows(target)] == [1, 2]


def test_without_cooldown_every_match_is_an_event(url: str, links: S3Store) -> None:
    c = _connector(url, links, [Rule("any", ["person", "Person"], ["yard"]),
                                Rule("cars", ["car"], ["yard"], cooldown_s=60)])
    c.migrate()
    _clear(c)
    p1 = _payload(1, 0, [("person", 0.9, INSIDE), ("person", 0.9, INSIDE2), ("Person", 0.9, INSIDE),
                         ("car", 0.9, INSIDE), ("car", 0.9, INSIDE2)])
    assert c.apply([("e1", p1), ("e1", p1)]) == 10  # a duplicate in one batch: one row per key all the same
    rows = {(r[0], r[2]) for r in _rows(c)}
    slot = int(T0.timestamp()) // 60
    assert rows == {("any", "person|1|10.0,10.0,50.0,90.0"), ("any", "person|1|60.0,20.0,80.0,60.0"),
                    ("any", "Person|1|10.0,10.0,50.0,90.0"),  # keys are case-sensitive on MariaDB too
                    ("cars", f"car|{slot}")}
    c.engine.dispose()


def test_capture_time_comes_from_the_image(target: SecurityConnector) -> None:
    p = _payload(1, 60, [("person", 0.9, INSIDE)])  # the event was made an hour later (00:00 Berlin) ...
    p["data"]["image"]["captured_at"] = "2026-01-01T22:07:30Z"  # ... than the capture, which picks the slot
    target.apply([("e1", p)])
    (row,) = _rows(target)
    assert row[events.c.keys().index("dedupe_key")] == f"person|{int(T0.timestamp()) // 300 + 1}"
    assert _utc(row[events.c.keys().index("captured_at")]) == T0 + timedelta(seconds=450)


# --- property: any interleaving of duplicate and reordered deliveries yields the same rows -------------------

PROP_RULES = [
    Rule("person", ["person", "car"], ["yard"], min_score=0.5, cooldown_s=300, severity="high"),
    Rule("each", ["person"], ["yard"]),  # no cool-down: one event per detection
    Rule("brief", ["car"], ["yard"], windows=[(time(23, 4), time(23, 9))], cooldown_s=120),  # Berlin time
]
SECONDS = [0, 1, 119, 120, 299, 300, 301, 330, 599, 600]  # on and around the 120 s and 300 s slot edges
detection = st.tuples(st.sampled_from(["person", "car", "dog"]), st.sampled_from([0.4, 0.9]),
                      st.sampled_from([INSIDE, INSIDE2, OUTSIDE]))
payloads = st.lists(st.tuples(st.sampled_from(SECONDS), st.lists(detection, min_size=1, max_size=3)),
                    min_size=1, max_size=6)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list, list[list]]:
    evs = [(f"e{i}", _payload(i, s / 60, dets)) for i, (s, dets) in enumerate(draw(payloads), start=1)]
    seq = list(range(len(evs))) + draw(st.lists(st.integers(0, len(evs) - 1), max_size=len(evs)))  # duplicates
    seq = draw(st.permutations(seq))
    cuts = draw(st.lists(st.booleans(), min_size=len(seq) - 1, max_size=len(seq) - 1))
    batches, cur = [], [evs[seq[0]]]
    for i, cut in zip(seq[1:], cuts):
        if cut:
            batches.append(cur)
            cur = []
        cur.append(evs[i])
    return evs, batches + [cur]


@pytest.fixture
def prop_target(url: str, links: S3Store) -> Iterator[SecurityConnector]:
    c = _connector(url, links, PROP_RULES)
    c.migrate()
    yield c
    c.engine.dispose()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(deliveries())
def test_any_interleaving_same_rows(prop_target: SecurityConnector, case: tuple[list, list[list]]) -> None:
    evs, batches = case
    c = prop_target
    _clear(c)
    for ev in sorted(evs, key=lambda e: (e[1]["timestamp"], e[1]["data"]["image"]["id"])):
        c.apply([ev])  # each event once, in capture order
    want = _rows(c)
    _clear(c)
    for b in batches:
        c.apply(b)
    assert _rows(c) == want
    with c.engine.connect() as conn:  # snapshot links differ only by when they were signed
        assert all(f"cam/{i}.jpg" in u for i, u in conn.execute(select(events.c.image_id, events.c.snapshot_url)))
