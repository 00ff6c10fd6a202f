"""Security connector: detections in ``job.succeeded`` payloads -> events in a security database.

Geometric rule: a detection (any result row with a label and a box, whatever analyzer produced it: object
grounding, OCR text rows use their text as label only if a rule names it) matches a zone when the centre of its
box lies inside the zone polygon (even-odd rule; normalised zone points are scaled by the image width/height).
A rule matches when the label is one of its labels, the zone is one of its zones, score >= ``min_score`` and the
capture time, in the site's time zone, lies in one of its windows (a window may cross midnight).

Checks: a rule that names checks also matches every answer in the payload's ``answers`` whose expectation did not
hold (``passed`` false) in its windows, whatever the source: an event with zone ``""``, label = the check's name,
box ``""``, score = the answer's confidence and the check's own severity; the cool-down works as for labels.

Writes: ``security_events`` keyed by (rule, zone, dedupe_key). With ``cooldown_s > 0`` time is cut into slots of
``cooldown_s`` seconds (slot = floor(UTC epoch of the capture / cooldown_s)) and ``dedupe_key`` is
``"<label>|<slot>"``: per (rule, zone, label, slot) one event is kept, the earliest by the total order
(capture time, image id, digest of box and event id). Without a cool-down ``dedupe_key`` is
``"<label>|<image id>|<box>"``: every match is an event. The order is stored as ``keep_rank``, a fixed-width digit
string that is *greatest* for the earliest candidate, and one multi-row upsert per batch replaces a row only by a
strictly greater ``keep_rank`` (:func:`connectors.targets.upsert`). So the rows are a function of the set of
events delivered, whatever their order, duplication or batching. ``snapshot_url`` is presigned when the row is
written (its lifetime counts from then) and is not refreshed by a re-delivery; it is the one column that depends
on when, not what, was delivered.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from typing import Any, ClassVar, Optional, Protocol, Sequence
from zoneinfo import ZoneInfo

from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table
from sqlalchemy.dialects import mysql

from connectors.geometry import centre, point_in_polygon
from connectors.targets import TargetDatabase, event_time, upsert
from services.events import results_of

metadata = MetaData()


def _key_str(n: int) -> Any:
    """A key column compared byte for byte: MariaDB's default collations fold case and accents."""
    return String(n).with_variant(mysql.VARCHAR(n, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb")


events = Table(
    "security_events", metadata,
    Column("rule", _key_str(64), primary_key=True),
    Column("zone", _key_str(64), primary_key=True),
    Column("dedupe_key", _key_str(255), primary_key=True),  # "label|slot" (cool-down) or "label|image_id|box"
    Column("label", String(128), nullable=False),
    Column("image_id", Integer, nullable=False),
    Column("box", String(96), nullable=False),  # "x1,y1,x2,y2" rounded to 0.1 px
    Column("score", Float),
    Column("severity", String(16), nullable=False),
    Column("captured_at", DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
           nullable=False),  # UTC
    Column("image_key", String(1024)),
    Column("snapshot_url", String(4096)),
    Column("event_id", String(64), nullable=False),
    Column("keep_rank", String(64), nullable=False),  # greatest = earliest candidate: the one kept
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
    checks: Sequence[str] = ()  # failed checks that raise an event (no zone: a check is about the whole image)


_ORIGIN = datetime(1, 1, 1, tzinfo=timezone.utc)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


@dataclass
class SecurityConnector(TargetDatabase):
    tables: ClassVar[MetaData] = metadata
    name: str
    url: str
    zones: Sequence[Zone]
    rules: Sequence[Rule]
    timezone: str = "UTC"
    store: Optional[Presigner] = None
    link_lifetime: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if self.link_lifetime > timedelta(days=7):
            raise ValueError("link_lifetime: at most 7 days (S3 presigned URL limit)")
        names = {z.name for z in self.zones}
        for r in self.rules:
            for z in r.zones:
                if z not in names:
                    raise ValueError(f"rules.{r.name}.zones: unknown zone {z!r}")
            if r.cooldown_s < 0:
                raise ValueError(f"rules.{r.name}.cooldown_s: must be >= 0, got {r.cooldown_s}")
        for z in self.zones:
            if len(z.points) < 3:
                raise ValueError(f"zones.{z.name}.points: a zone needs at least three points")


    def matches(self, data: dict[str, Any], captured: datetime) -> list[dict[str, Any]]:
        """Candidate events of one payload (pure; before the cool-down picks one per slot)."""
        image = data.get("image") or {}
        w, h = float(image.get("width") or 1), float(image.get("height") or 1)
        captured = captured.astimezone(timezone.utc)
        local = captured.astimezone(ZoneInfo(self.timezone)).time()
        zones = {z.name: z for z in self.zones if z.source == image.get("source")}
        out = []
        rows = [r for found in results_of(data).values() for r in found]
        for rule in self.rules:
            if rule.windows and not any(_in_window(local, a, b) for a, b in rule.windows):
                continue
            for r in rows:
                label = r.get("label") or r.get("text")
                if label not in rule.labels or float(r.get("score") or 0.0) < rule.min_score:
                    continue
                box = (float(r["x1"]), float(r["y1"]), float(r["x2"]), float(r["y2"]))
                box_s = ",".join(f"{v:.1f}" for v in box)
                slot = _slot(captured, rule.cooldown_s)
                dedupe = f"{label}|{slot}" if slot is not None else f"{label}|{int(image['id'])}|{box_s}"
                for zname in rule.zones:
                    z = zones.get(zname)
                    if z is None:
                        continue
                    poly = [(x * w, y * h) for x, y in z.points] if z.normalised else list(z.points)
                    if point_in_polygon(centre(box), poly):
                        out.append({"rule": rule.name, "zone": zname, "dedupe_key": dedupe, "label": label,
                                    "image_id": int(image["id"]), "box": box_s, "score": r.get("score"),
                                    "severity": rule.severity, "captured_at": captured,
                                    "image_key": image.get("key")})
            for a in data.get("answers") or ():
                if a.get("passed") is not False or a.get("check_name") not in rule.checks:
                    continue
                slot = _slot(captured, rule.cooldown_s)
                name = a["check_name"]
                out.append({"rule": rule.name, "zone": "", "label": name, "image_id": int(image["id"]), "box": "",
                            "dedupe_key": f"{name}|{slot}" if slot is not None else f"{name}|{int(image['id'])}|",
                            "score": a.get("confidence"), "severity": a.get("severity") or rule.severity,
                            "captured_at": captured, "image_key": image.get("key")})
        return out

    def apply(self, batch: Sequence[tuple[str, dict[str, Any]]]) -> int:
        """Upsert the events of ``(event_id, payload)`` pairs in one statement and transaction.

        Returns the number of candidate events (rule matches before the cool-down), whatever was already written.
        """
        candidates: list[dict[str, Any]] = []
        for eid, payload in batch:
            if payload.get("type") != "job.succeeded":
                continue
            for ev in self.matches(payload.get("data") or {}, event_time(payload)):
                ev["event_id"] = eid
                ev["keep_rank"] = _keep_rank(ev)
                candidates.append(ev)
        # One row per key within the batch (a multi-row upsert must not hit a key twice): the greatest keep_rank,
        # the first seen on a tie (equal ranks are the same detection of the same event).
        best: dict[tuple[str, str, str], dict[str, Any]] = {}
        for ev in candidates:
            k = (ev["rule"], ev["zone"], ev["dedupe_key"])
            if k not in best or ev["keep_rank"] > best[k]["keep_rank"]:
                best[k] = ev
        rows = [dict(ev, snapshot_url=self._link(ev["image_key"])) for ev in best.values()]
        if rows:
            with self.engine.begin() as conn:
                upsert(conn, events, rows, batched=True, newer="keep_rank")
        return len(candidates)

    def _link(self, key: Optional[str]) -> Optional[str]:
        return self.store.presigned_get(key, self.link_lifetime) if self.store is not None and key else None


def _in_window(t: time, start: time, end: time) -> bool:
    return start <= t < end if start <= end else (t >= start or t < end)


def _slot(captured: datetime, cooldown_s: float) -> Optional[int]:
    """The cool-down slot of a capture: floor(UTC epoch / cooldown_s), in whole microseconds; None without one."""
    step = round(cooldown_s * 1_000_000)
    return (captured - _EPOCH) // _US // step if step > 0 else None


def _desc(value: int, width: int) -> str:
    """``value`` as ``width`` digits that sort in the opposite order."""
    if not 0 <= value < 10 ** width:
        raise ValueError(f"{value} does not fit {width} digits")
    return f"{10 ** width - 1 - value:0{width}d}"


def _keep_rank(ev: dict[str, Any]) -> str:
    """Fixed-width digits, greatest for the earliest capture, then the lowest image id, then the lowest digest of
    (box, event id): a total order on candidates that any collation compares like numbers."""
    digest = int.from_bytes(hashlib.sha256(f"{ev['box']}|{ev['event_id']}".encode()).digest()[:8], "big")
    return (_desc((ev["captured_at"] - _ORIGIN) // _US, 18) + _desc(ev["image_id"] + 2 ** 31, 10)
            + _desc(digest, 20))
