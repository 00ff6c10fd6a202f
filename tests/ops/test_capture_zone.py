"""Capture time through the pipeline: a camera in Europe/Berlin stamps 23:30 local time (EXIF without an offset);
the image is stored as 22:30 UTC and a 22:00-06:00 security rule in the site's zone fires; 21:30 local does not.
OffsetTimeOriginal wins over the source's zone; a source without a zone reads EXIF as UTC."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import yaml
from sqlalchemy import select, text

from services.config import parse_config
from services.config_targets import parse_window
from services.db import session_scope
from services.ingest.register import register_and_send
from services.ingest.upload import md5_hex
from services.schema import Image, Job, OutboxEvent
from services.storage import ObjectInfo
from tests.engines.test_capture_time import jpeg_taken_at
from tests.pipeline.conftest import app_env, runtime, settings  # noqa: F401 - fixtures

pytestmark = pytest.mark.services

CONFIG = {"profiles": {"codes": {"analyzers": ["barcode"]}},
          "sources": {"gate": {"prefix": "gate/", "profile": "codes", "timezone": "Europe/Berlin"},
                      "lot": {"prefix": "lot/", "profile": "codes"}}}
PICTURES = {  # key -> (EXIF wall clock, OffsetTimeOriginal, capture time stored)
    "gate/late.jpg": ("2026:01:15 23:30:00", None, datetime(2026, 1, 15, 22, 30, tzinfo=timezone.utc)),
    "gate/early.jpg": ("2026:01:15 21:30:00", None, datetime(2026, 1, 15, 20, 30, tzinfo=timezone.utc)),
    "gate/summer.jpg": ("2026:07:01 23:30:00", None, datetime(2026, 7, 1, 21, 30, tzinfo=timezone.utc)),
    "lot/offset.jpg": ("2026:01:15 23:30:00", "+01:00", datetime(2026, 1, 15, 22, 30, tzinfo=timezone.utc)),
    "lot/plain.jpg": ("2026:01:15 23:30:00", None, datetime(2026, 1, 15, 23, 30, tzinfo=timezone.utc)),
}


def test_a_berlin_camera_at_half_past_eleven_triggers_the_night_rule(db_url, runtime, target_url) -> None:  # noqa: ANN001
    from connectors.security import Rule, SecurityConnector, Zone
    from workers.pipeline import run_batch

    runtime.config = parse_config(yaml.safe_dump(CONFIG))
    for key, (wall_clock, offset, _) in PICTURES.items():
        data = jpeg_taken_at(wall_clock, offset)
        runtime.store.put(key, data, "image/jpeg")
        register_and_send(db_url, runtime.config, runtime.store.bucket,
                          [ObjectInfo(key, md5_hex(data), len(data), None, "image/jpeg")], lambda *_: None)
    with session_scope(db_url) as s:
        run_batch(runtime, list(s.scalars(select(Job.id))), 16)
        stored = dict(s.execute(select(Image.key, Image.captured_at)).all())
        payloads = [(e.event_id, e.payload) for e in s.scalars(select(OutboxEvent).order_by(OutboxEvent.id))]
    assert stored == {k: expected for k, (_, _, expected) in PICTURES.items()}
    assert {p["data"]["image"]["captured_at"] for _, p in payloads} >= {"2026-01-15T22:30:00Z", "2026-01-15T20:30:00Z"}
    # What the gate camera saw, as DeepSeek-VL2 grounds it (no weights here): a person across the whole picture.
    for _, p in payloads:
        assert p["type"] == "job.succeeded", p
        p["data"]["results"]["objects"] = [{"analyzer": "vl2-ground", "label": "person", "x1": 1.0, "y1": 1.0,
                                            "x2": 15.0, "y2": 15.0, "score": 0.9}]
    guard = SecurityConnector("guard", target_url, timezone="Europe/Berlin",
                              zones=[Zone("door", "gate", [(0, 0), (1, 0), (1, 1), (0, 1)], normalised=True)],
                              rules=[Rule("night", labels=["person"], zones=["door"],
                                          windows=[parse_window("22:00-06:00")], severity="high")])
    guard.migrate()
    with guard.engine.begin() as conn:
        conn.execute(text("DELETE FROM security_events"))
    assert guard.apply(payloads) == 2  # late.jpg (23:30 CET) and summer.jpg (23:30 CEST); not early.jpg (21:30)
    with guard.engine.connect() as conn:
        rows = conn.execute(text("SELECT image_key, captured_at FROM security_events ORDER BY captured_at")).all()
    guard.engine.dispose()
    assert [(k, t.astimezone(timezone.utc)) for k, t in rows] == [
        ("gate/late.jpg", PICTURES["gate/late.jpg"][2]), ("gate/summer.jpg", PICTURES["gate/summer.jpg"][2])]
