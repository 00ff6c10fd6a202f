"""Security connector: detections in ``job.succeeded`` payloads -> events in a security database.

Geometric rule: a detection (any result row with a label and a box, whatever analyzer produced it: object
grounding, OCR text rows use their text as label only if a rule names it) matches a zone when the centre of its
box lies inside the zone polygon (even-odd rule; normalised zone points are scaled by the image width/height).
A rule matches when the label is one of its labels, the zone is one of its zones, score >= ``min_score`` and the
capture time, in the site's time zone, lies in one of its windows (a window may cross midnight).

Writes: ``security_events`` keyed by (rule, zone, image_id, box) — re-delivery changes nothing. The cool-down
per (rule, zone, label) suppresses an event when another event for that key lies less than ``cooldown_s``
before it; it is evaluated against rows already written, so it depends on delivery order for events that
arrive out of order within one cool-down (documented limitation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any, Optional, Protocol, Sequence
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Column, DateTime, Float, Integer, MetaData, String, Table, and_, create_engine, select,
)
from sqlalchemy.engine import Engine

from connectors.geometry import centre, point_in_polygon

metadata = MetaData()

events = Table(
    "security_events", metadata,
    Column("rule", String(64), primary_key=True),
    Column("zone", String(64), primary_key=True),
    Column("image_id", Integer, primary_key=True),
    Column("box", String(96), primary_key=True),  # "x1,y1,x2,y2" rounded to 0.1 px
    Column("label", String(128), nullable=False),
    Column("score", Float),
    Column("severity", String(16), nullable=False),
    Column("captured_at", DateTime(timezone=True), nullable=False),
    Column("image_key", String(1024)),
    Column("snapshot_url", String(4096)),
    Column("event_id", String(64), nullable=False),
)


class Presigner(Protocol):
    def presigned_get(self, key: str, expires: timedelta) -> str: ...


@dataclass(frozen=True)
class Zone:
    name: str
    source: str
    points: Sequence[tuple[float, float]]
    normalised: bool = False


@dataclass(frozen=True)
class Rule:
    name: str
    labels: Sequence[str]
    zones: Sequence[str]
    windows: Sequence[tuple[time, time]] = ()  # empty: always
    min_score: float = 0.0
    cooldown_s: float = 0.0
    severity: str = "warning"


@dataclass
class SecurityConnector:
    name: str
    url: str
    zones: Sequence[Zone]
    rules: Sequence[Rule]
    timezone: str = "UTC"
    store: Optional[Presigner] = None
    link_lifetime: timedelta = timedelta(hours=1)
    _engine: Optional[Engine] = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.link_lifetime > timedelta(days=7):
            raise ValueError("link_lifetime: at most 7 days (S3 presigned URL limit)")
        names = {z.name for z in self.zones}
        for r in self.rules:
            for z in r.zones:
                if z not in names:
                    raise ValueError(f"rules.{r.name}.zones: unknown zone {z!r}")
        for z in self.zones:
            if len(z.points) < 3:
                raise ValueError(f"zones.{z.name}.points: a zone needs at least three points")

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(self.url, pool_pre_ping=True)
        return self._engine

    def migrate(self) -> None:
        metadata.create_all(self.engine)

    def matches(self, data: dict[str, Any], captured: datetime) -> list[dict[str, Any]]:
        """Candidate events of one payload (pure; before cool-down)."""
        image = data.get("image") or {}
        w, h = float(image.get("width") or 1), float(image.get("height") or 1)
        local = captured.astimezone(ZoneInfo(self.timezone)).time()
        zones = {z.name: z for z in self.zones if z.source == image.get("source")}
        out = []
        rows = [r for kind in ("objects", "text", "barcodes") for r in (data.get("results") or {}).get(kind, [])]
        for rule in self.rules:
            if rule.windows and not any(_in_window(local, a, b) for a, b in rule.windows):
                continue
            for r in rows:
                label = r.get("label") or r.get("text")
                if label not in rule.labels or float(r.get("score") or 0.0) < rule.min_score:
                    continue
                box = (float(r["x1"]), float(r["y1"]), float(r["x2"]), float(r["y2"]))
                for zname in rule.zones:
                    z = zones.get(zname)
                    if z is None:
                        continue
                    poly = [(x * w, y * h) for x, y in z.points] if z.normalised else list(z.points)
                    if point_in_polygon(centre(box), poly):
                        out.append({"rule": rule.name, "zone": zname, "image_id": int(image["id"]),
                                    "box": ",".join(f"{v:.1f}" for v in box), "label": label,
                                    "score": r.get("score"), "severity": rule.severity, "captured_at": captured,
                                    "image_key": image.get("key"), "_cooldown": rule.cooldown_s})
        return out

    def apply(self, batch: Sequence[tuple[str, dict[str, Any]]]) -> int:
        """Write the events of ``(event_id, payload)`` pairs; returns how many rows were inserted."""
        n = 0
        with self.engine.begin() as conn:
            for eid, payload in batch:
                if payload.get("type") != "job.succeeded":
                    continue
                captured = datetime.fromisoformat(str(payload["timestamp"]).replace("Z", "+00:00"))
                for ev in self.matches(payload.get("data") or {}, captured):
                    cooldown = timedelta(seconds=ev.pop("_cooldown"))
                    key = and_(events.c.rule == ev["rule"], events.c.zone == ev["zone"],
                               events.c.image_id == ev["image_id"], events.c.box == ev["box"])
                    if conn.execute(select(events.c.rule).where(key)).first():
                        continue  # already written: re-delivery
                    if cooldown and conn.execute(select(events.c.rule).where(
                            events.c.rule == ev["rule"], events.c.zone == ev["zone"],
                            events.c.label == ev["label"], events.c.captured_at > captured - cooldown,
                            events.c.captured_at <= captured)).first():
                        continue  # suppressed by the cool-down
                    url = (self.store.presigned_get(ev["image_key"], self.link_lifetime)
                           if self.store is not None and ev["image_key"] else None)
                    conn.execute(events.insert().values(**ev, snapshot_url=url, event_id=eid))
                    n += 1
        return n


def _in_window(t: time, start: time, end: time) -> bool:
    return start <= t < end if start <= end else (t >= start or t < end)
