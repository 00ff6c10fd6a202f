"""Inventory connector: ``job.succeeded`` payloads -> observations and current stock in a target database.

Reads only the event payload (``image`` and ``results`` rows). Per image it yields observations:
barcode values (kind ``barcode``), SKU codes matched in OCR text by configurable regexes (kind ``sku``; the text
is the uploader's, so the patterns run under RE2, in time linear in a line capped at ``MAX_LINE`` characters),
and counts of grounded objects per label (kind ``count``, code = label). A barcode and an OCR code read from
overlapping boxes that disagree produce ``needs_review`` on both observations instead of picking one.

Writes are idempotent upserts keyed by (image_id, kind, code): re-delivering an event changes nothing, and
the stock row per (site, aisle, bay, sku) keeps the latest sighting by (seen_at, image_id) whatever order
events arrive in. Tables (created by ``migrate``): ``inventory_observations``, ``inventory_stock``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar, Optional, Sequence

from sqlalchemy import (
    Boolean, Column, DateTime, Integer, MetaData, String, Table,
)

from connectors.geometry import overlaps
from connectors.targets import TargetDatabase, event_time, upsert
from services.events import results_of
from services.safetext import capped, compile_untrusted

metadata = MetaData()

observations = Table(
    "inventory_observations", metadata,
    Column("image_id", Integer, primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("code", String(128), primary_key=True),
    Column("quantity", Integer, nullable=False),
    Column("needs_review", Boolean, nullable=False),
    Column("site", String(64)), Column("aisle", String(64)), Column("bay", String(64)),
    Column("seen_at", DateTime(timezone=True), nullable=False),
    Column("image_bucket", String(255)), Column("image_key", String(1024)),
    Column("event_id", String(64), nullable=False),
)

stock = Table(
    "inventory_stock", metadata,
    Column("site", String(64), primary_key=True),
    Column("aisle", String(64), primary_key=True),
    Column("bay", String(64), primary_key=True),
    Column("sku", String(128), primary_key=True),
    Column("quantity", Integer, nullable=False),
    Column("needs_review", Boolean, nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
    Column("image_id", Integer, nullable=False),
    Column("image_bucket", String(255)), Column("image_key", String(1024)),
    Column("seen_rank", String(40), nullable=False),  # sortable "<UTC time>-<image id>": which sighting is newest
)


@dataclass(frozen=True)
class Location:
    site: str = ""
    aisle: str = ""
    bay: str = ""


@dataclass(frozen=True)
class Observation:
    kind: str  # "barcode" | "sku" | "count"
    code: str
    quantity: int
    needs_review: bool = False


@dataclass
class InventoryConnector(TargetDatabase):
    """Maps sources to locations and extracts observations with ``sku_patterns`` (RE2 regexes; group 1 if any)."""

    tables: ClassVar[MetaData] = metadata
    name: str
    url: str
    locations: dict[str, Location] = field(default_factory=dict)
    sku_patterns: Sequence[str] = (r"\b[A-Z]{2,4}-\d{3,8}\b",)

    def __post_init__(self) -> None:
        self._patterns = [compile_untrusted(p) for p in self.sku_patterns]

    def _codes(self, text: str) -> list[str]:
        out: list[str] = []
        for pat in self._patterns:
            for m in pat.finditer(capped(text or "")):
                out.append(m.group(1) if m.groups() else m.group(0))
        return out

    def observations(self, data: dict[str, Any]) -> list[Observation]:
        """Observations of one ``job.succeeded`` payload (pure; no I/O)."""
        results = results_of(data)
        barcodes = [(str(r["value"]), _box(r)) for r in results["barcodes"] if r.get("value")]
        ocr = [(c, _box(r)) for r in results["text_lines"] for c in self._codes(r.get("text") or "")]
        review: set[tuple[str, str]] = set()
        for bv, bb in barcodes:
            for ov, ob in ocr:
                if bv != ov and bb is not None and ob is not None and overlaps(bb, ob):
                    review.add(("barcode", bv))
                    review.add(("sku", ov))
        obs: list[Observation] = []
        for kind, items in (("barcode", barcodes), ("sku", ocr)):
            for code, n in Counter(c for c, _ in items).items():
                obs.append(Observation(kind, code, n, (kind, code) in review))
        labels = Counter(str(r["label"]) for r in results["objects"] if r.get("label"))
        obs.extend(Observation("count", lab, n) for lab, n in labels.items())
        return obs

    def rows(self, event_id: str, payload: dict[str, Any]) -> tuple[list[dict], list[dict]]:
        data = payload.get("data") or {}
        image = data.get("image") or {}
        loc = self.locations.get(str(image.get("source")), Location())
        seen = event_time(payload)
        base = {"site": loc.site, "aisle": loc.aisle, "bay": loc.bay, "seen_at": seen,
                "image_bucket": image.get("bucket"), "image_key": image.get("key")}
        obs_rows, stock_rows = [], []
        for o in self.observations(data):
            obs_rows.append({"image_id": int(image["id"]), "kind": o.kind, "code": o.code, "quantity": o.quantity,
                             "needs_review": o.needs_review, "event_id": event_id, **base})
            if o.kind in ("barcode", "sku"):
                stock_rows.append({"site": loc.site, "aisle": loc.aisle, "bay": loc.bay, "sku": o.code,
                                   "quantity": o.quantity, "needs_review": o.needs_review, "last_seen_at": seen,
                                   "image_id": int(image["id"]), "image_bucket": image.get("bucket"),
                                   "image_key": image.get("key"), "seen_rank": _rank(seen, int(image["id"]))})
        return obs_rows, stock_rows

    def apply(self, events: Sequence[tuple[str, dict[str, Any]]], batched: bool = True) -> None:
        """Upsert the observations and stock of ``(event_id, payload)`` pairs in one transaction."""
        obs_rows: list[dict] = []
        stock_rows: list[dict] = []
        for eid, payload in events:
            if payload.get("type") != "job.succeeded":
                continue
            o, s = self.rows(eid, payload)
            obs_rows += o
            stock_rows += s
        with self.engine.begin() as conn:
            unique = {(r["image_id"], r["kind"], r["code"]): r for r in obs_rows}  # a duplicate event in the batch
            upsert(conn, observations, list(unique.values()), batched, newer=None)
            upsert(conn, stock, _latest(stock_rows), batched, newer="seen_rank")


def _box(r: dict[str, Any]) -> Optional[tuple[float, float, float, float]]:
    try:
        return (float(r["x1"]), float(r["y1"]), float(r["x2"]), float(r["y2"]))
    except (KeyError, TypeError, ValueError):
        return None


def _rank(seen: datetime, image_id: int) -> str:
    return f"{seen.astimezone(timezone.utc).strftime('%Y%m%dT%H%M%S.%f')}-{image_id:016d}"


def _latest(rows: list[dict]) -> list[dict]:
    """One stock row per key within a batch (the newest), so a multi-row upsert never hits a key twice."""
    best: dict[tuple, dict] = {}
    for r in rows:
        k = (r["site"], r["aisle"], r["bay"], r["sku"])
        if k not in best or r["seen_rank"] > best[k]["seen_rank"]:
            best[k] = r
    return list(best.values())
