"""Retention and forgetting: delete images, everything derived from them, and their objects, with an audit row.

``purge``: per source with ``retain_days`` (YAML), the images that reached the bucket (``uploaded_at``, else
``registered_at``) more than that many days ago. ``forget``: one source's images with one object key (every
version), or whose time (capture, else upload, else registration) is before a given instant.

What goes, per image, in this order:
1. its object in the bucket, when the bucket's current version is one of the targeted images (a newer upload under
   the same key that is not targeted stays). Objects go first: an object left behind would be registered again by
   the scanner; a row left behind by a failure is removed by running the command again.
2. snapshot links to it in the security connectors' target databases (``security_events.snapshot_url`` and
   ``image_key`` set to null; the event row itself, a fact about a rule, stays);
3. in one transaction with the audit row: every row that belongs to it, found from the live schema's foreign keys,
   so tables added later (VL2 check answers...) are covered: rows whose key column (``image_id``, ``job_id``,
   ``event_id``, or any non-null foreign key) points at a deleted row are deleted, dependents first (result rows,
   webhook and connector deliveries, outbox events and their payloads, jobs, the image); a nullable foreign key of
   another name (a paired image) is set to null, so other images' rows stay.

The audit row (``audit_log``) keeps the counts: images, rows per table, deliveries by status, objects, links.
Webhook payloads already delivered to subscribers are outside vlwatch's reach.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import Connection, MetaData, Table, func, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from services.config import AppConfig
from services.db import get_engine, session_scope
from services.schema import Image, Source, utcnow
from services.storage import ObjectStore
from services.tokens import audit

log = logging.getLogger(__name__)

CHUNK = 500  # images per transaction
OWNING = {"image_id", "job_id", "event_id"}  # nullable foreign keys that still mean "belongs to"
DELIVERY_TABLES = {"webhook_deliveries": "webhook", "connector_deliveries": "connector"}


@dataclass
class Removal:
    """What was (or, in a dry run, would be) removed."""

    images: int = 0
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # table -> rows deleted
    detached: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # table.column -> set to null
    deliveries: dict[str, dict[str, int]] = field(default_factory=dict)  # webhook|connector -> status -> n
    objects_deleted: int = 0
    objects_kept: int = 0  # the key holds a newer, untargeted version
    links_cleared: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.images, "rows": dict(self.rows), "detached": dict(self.detached),
                "deliveries": self.deliveries, "objects_deleted": self.objects_deleted,
                "objects_kept": self.objects_kept, "links_cleared": self.links_cleared}


def _schema(conn: Connection) -> MetaData:
    meta = MetaData()
    meta.reflect(conn)
    return meta


def _plan(meta: MetaData, image_ids: list[int]) -> tuple[list[tuple[Table, ColumnElement]],
                                                          list[tuple[Table, Any, ColumnElement]]]:
    """(deletes in execution order: dependents first; columns to set to null) for the rows of ``image_ids``."""
    images = meta.tables["images"]
    doomed: dict[str, ColumnElement] = {"images": images.c.id.in_(image_ids)}
    detach = []
    for t in meta.sorted_tables:  # parents before children
        if t.name == "images":
            continue
        owned = []
        for fk in t.foreign_keys:
            parent = fk.column.table
            if parent.name not in doomed:
                continue
            ref = select(fk.column).where(doomed[parent.name])
            if not fk.parent.nullable or fk.parent.name in OWNING:
                owned.append(fk.parent.in_(ref.scalar_subquery()))
            else:
                detach.append((t, fk.parent, fk.parent.in_(ref.scalar_subquery())))
        if owned:
            doomed[t.name] = or_(*owned)
    order = [(t, doomed[t.name]) for t in reversed(meta.sorted_tables) if t.name in doomed]
    return order, detach


def _delivery_counts(conn: Connection, meta: MetaData, order: list[tuple[Table, ColumnElement]]) -> dict:
    out: dict[str, dict[str, int]] = {}
    for t, cond in order:
        if t.name in DELIVERY_TABLES and "status" in t.c:
            out[DELIVERY_TABLES[t.name]] = dict(conn.execute(select(t.c.status, func.count()).where(cond)
                                                             .group_by(t.c.status)).all())
    return out


def _remove_rows(conn: Connection, image_ids: list[int], removal: Removal, dry_run: bool) -> None:
    meta = _schema(conn)
    order, detach = _plan(meta, image_ids)
    for kind, counts in _delivery_counts(conn, meta, order).items():
        mine = removal.deliveries.setdefault(kind, {})
        for status, n in counts.items():
            mine[status] = mine.get(status, 0) + n
    for t, column, cond in detach:
        n = (conn.scalar(select(func.count()).select_from(t).where(cond)) if dry_run
             else conn.execute(update(t).where(cond).values({column.name: None})).rowcount)
        if n:
            removal.detached[f"{t.name}.{column.name}"] += n
    for t, cond in order:
        n = (conn.scalar(select(func.count()).select_from(t).where(cond)) if dry_run
             else conn.execute(t.delete().where(cond)).rowcount)
        removal.rows[t.name] += n
    removal.images += len(image_ids)


def _remove_objects(store: ObjectStore, images: list[Any], removal: Removal, dry_run: bool) -> None:
    """Delete each key whose current version in the bucket is one of the targeted images (or is gone)."""
    targeted: dict[str, set[str]] = defaultdict(set)
    for im in images:
        if im.bucket == store.bucket:
            targeted[im.key].add(im.etag)
    for key, etags in targeted.items():
        info = store.stat(key)
        if info is not None and info.etag not in etags:
            removal.objects_kept += 1
            continue
        if info is not None:
            if not dry_run:
                store.delete(key)
            removal.objects_deleted += 1


def _clear_links(config: AppConfig, image_ids: list[int], removal: Removal, dry_run: bool) -> None:
    """Snapshot links in every security connector's target database (``security_events``), by SQL."""
    for name, conn_cfg in config.connectors.items():
        if conn_cfg.kind != "security":
            continue
        with get_engine(conn_cfg.url).begin() as conn:
            meta = MetaData()
            meta.reflect(conn, only=lambda t, _: t == "security_events")
            events = meta.tables.get("security_events")
            if events is None or not {"image_id", "snapshot_url"} <= set(events.c.keys()):
                continue
            cond = events.c.image_id.in_(image_ids) & events.c.snapshot_url.is_not(None)
            if dry_run:
                removal.links_cleared += conn.scalar(select(func.count()).select_from(events).where(cond)) or 0
            else:
                values = {"snapshot_url": None, **({"image_key": None} if "image_key" in events.c else {})}
                removal.links_cleared += conn.execute(update(events).where(cond).values(values)).rowcount
                log.info("cleared snapshot links of %d image(s) in connector %s", len(image_ids), name)


def remove_images(db_url: str, config: AppConfig, store: ObjectStore, where: ColumnElement, action: str,
                  criteria: dict[str, Any], source: Optional[str] = None, dry_run: bool = False) -> Removal:
    """Remove the images ``where`` selects, ``CHUNK`` at a time; one audit row for the whole call (not in a dry
    run)."""
    removal = Removal()
    after = 0  # keyset over image ids: a dry run deletes nothing, so each chunk starts past the last
    while True:
        with get_engine(db_url).connect() as conn:
            images = conn.execute(select(Image.id, Image.bucket, Image.key, Image.etag)
                                  .where(where, Image.id > after).order_by(Image.id).limit(CHUNK)).all()
        if not images:
            break
        ids = [im.id for im in images]
        after = ids[-1]
        _remove_objects(store, images, removal, dry_run)
        _clear_links(config, ids, removal, dry_run)
        with get_engine(db_url).begin() as conn:
            _remove_rows(conn, ids, removal, dry_run)
    if not dry_run and removal.images:
        with session_scope(db_url) as s:
            audit(s, action, criteria, removal.as_dict(), source)
    return removal


def _source_is(name: str) -> ColumnElement:
    return Image.source_id == select(Source.id).where(Source.name == name).scalar_subquery()


def purge(db_url: str, config: AppConfig, store: ObjectStore, now: Optional[datetime] = None,
          dry_run: bool = False) -> dict[str, Removal]:
    """Images older than their source's ``retain_days``, per source."""
    now = now or utcnow()
    out = {}
    for name, src in config.sources.items():
        if src.retain_days is None:
            continue
        cutoff = now - timedelta(days=src.retain_days)
        where = _source_is(name) & (func.coalesce(Image.uploaded_at, Image.registered_at) < cutoff)
        out[name] = remove_images(db_url, config, store, where, "purge",
                                  {"retain_days": src.retain_days, "before": cutoff.isoformat()}, name, dry_run)
    return out


def forget(db_url: str, config: AppConfig, store: ObjectStore, source: str, key: Optional[str] = None,
           before: Optional[datetime] = None, dry_run: bool = False) -> Removal:
    """A source's images with object ``key`` (every version), or seen before ``before``; exactly one of both."""
    if (key is None) == (before is None):
        raise ValueError("give either a key or a time (before), not both or neither")
    if key is not None:
        where, criteria = _source_is(source) & (Image.key == key), {"key": key}
    else:
        seen = func.coalesce(Image.captured_at, Image.uploaded_at, Image.registered_at)
        where, criteria = _source_is(source) & (seen < before), {"before": before.isoformat()}
    return remove_images(db_url, config, store, where, "forget", criteria, source, dry_run)

