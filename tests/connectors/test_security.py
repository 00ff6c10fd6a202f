"""Security connector on real PostgreSQL and MariaDB: zones, windows in the site's zone, cool-down, idempotence."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone

import httpx
import pytest
from sqlalchemy import select, text

from connectors.security import Rule, SecurityConnector, Zone, events
from services.storage import S3Store

pytestmark = pytest.mark.services

T0 = datetime(2026, 1, 1, 22, 0, tzinfo=timezone.utc)  # 23:00 in Europe/Berlin


def _payload(image_id: int, minutes: float, dets: list[tuple[str, float, tuple]]) -> dict:
    return {"type": "job.succeeded", "timestamp": (T0 + timedelta(minutes=minutes)).isoformat(),
            "data": {"image": {"id": image_id, "bucket": "b", "key": f"cam/{image_id}.jpg", "source": "gate",
                               "width": 200, "height": 100},
                     "results": {"objects": [{"label": lab, "score": sc, "x1": b[0], "y1": b[1], "x2": b[2],
                                              "y2": b[3]} for lab, sc, b in dets], "text": [], "barcodes": []}}}


def _connector(url: str, links: S3Store) -> SecurityConnector:
    zones = [Zone("yard", "gate", [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)], normalised=True)]
    rules = [Rule("night-person", ["person"], ["yard"], windows=[(time(22, 0), time(6, 0))], min_score=0.5,
                  cooldown_s=300, severity="high")]
    return SecurityConnector("sec", url, zones, rules, timezone="Europe/Berlin", store=links,
                             link_lifetime=timedelta(minutes=15))


@pytest.fixture(params=["pg", "mariadb"])
def url(request) -> str:  # noqa: ANN001
    u = request.getfixturevalue("pg_url" if request.param == "pg" else "mariadb_url")
    return "mysql+pymysql://" + u[len("mysql://"):] if u.startswith("mysql://") else u


def test_zone_window_score_cooldown_idempotent(url: str, s3_settings) -> None:  # noqa: ANN001
    links = S3Store(s3_settings.endpoint, s3_settings.access_key, s3_settings.secret_key, s3_settings.bucket)
    links.put("cam/1.jpg", b"jpeg-bytes-1")
    c = _connector(url, links)
    c.migrate()
    with c.engine.begin() as conn:
        conn.execute(text("DELETE FROM security_events"))
    inside, outside = (10, 10, 50, 90), (150, 10, 190, 90)  # centres x=30 (in left half) and x=170
    batch = [("e1", _payload(1, 0, [("person", 0.9, inside), ("person", 0.9, outside), ("person", 0.3, inside),
                                     ("car", 0.9, inside)])),
             ("e2", _payload(2, 2, [("person", 0.9, inside)])),     # within cool-down: suppressed
             ("e3", _payload(3, 6, [("person", 0.8, inside)])),     # after cool-down: raised
             ("e4", _payload(4, 60 * 9, [("person", 0.9, inside)]))]  # 08:00 Berlin: outside the window
    assert c.apply(batch) == 2
    assert c.apply(batch) == 0  # re-delivery changes nothing
    with c.engine.connect() as conn:
        rows = conn.execute(select(events).order_by(events.c.image_id)).mappings().all()
    assert [(r["image_id"], r["label"], r["severity"], r["box"]) for r in rows] == [
        (1, "person", "high", "10.0,10.0,50.0,90.0"), (3, "person", "high", "10.0,10.0,50.0,90.0")]
    snap = rows[0]["snapshot_url"]
    assert "X-Amz-Expires=900" in snap  # the bounded lifetime
    assert httpx.get(snap).content == b"jpeg-bytes-1"
    c.engine.dispose()


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="rules.r.zones"):
        SecurityConnector("s", "sqlite://", [], [Rule("r", ["person"], ["nowhere"])])
    with pytest.raises(ValueError, match="zones.z.points"):
        SecurityConnector("s", "sqlite://", [Zone("z", "gate", [(0, 0), (1, 1)])], [])
