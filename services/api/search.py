"""What the API and the results page read, as plain functions over a SQLAlchemy connection: image search with
keyset paging, one image's results, jobs with their reasons, delivery state. Every function takes the caller's
source scope (``None``: every source) and never returns a row of a source outside it.

Search semantics (documented in docs/api.md, timed by bench/search.py):
- ``source``: the image's source; ``since``/``until``: its time, the capture time where EXIF gave one, else when
  the object reached the bucket (``coalesce(captured_at, uploaded_at)``), ``since <= t < until``;
- ``label``: a grounded object with that label; ``barcode``: a barcode with exactly that value; ``text``: an OCR
  line containing the words (case-insensitive); ``min_score``: with ``label`` or ``text``, their rows must reach it;
  alone, some object or text line must; barcodes have no score and always pass;
- ``status``: the image has a job in that status (``failed``: failed jobs); ``check``/``passed``: an answer to that
  check (the ``answers`` table of VL2 checks);
- newest image first (by id); ``before_id`` is the cursor of the next page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import Connection, and_, exists, func, literal, or_, select
from sqlalchemy.sql.elements import ColumnElement

from services.schema import (
    AnswerRow, BarcodeRow, ConnectorDelivery, ConnectorTarget, DeliveryStatus, Image, Job, ObjectRow, OutboxEvent, Source,
    TextLineRow, WebhookDelivery, WebhookSubscription,
)

MAX_PAGE = 200
SCORED = (ObjectRow, TextLineRow)


@dataclass(frozen=True)
class Search:
    source: Optional[str] = None
    since: Optional[datetime] = None
    until: Optional[datetime] = None
    label: Optional[str] = None
    barcode: Optional[str] = None
    text: Optional[str] = None
    min_score: Optional[float] = None
    status: Optional[str] = None
    check: Optional[str] = None
    passed: Optional[bool] = None
    before_id: Optional[int] = None
    limit: int = 50


def seen_between(since: Optional[datetime], until: Optional[datetime]) -> ColumnElement:
    """``since <= coalesce(captured_at, uploaded_at) < until``, written as two ranges so that PostgreSQL can use
    the index of each column (one on the coalesce would need an expression index)."""
    def within(column: Any) -> list[ColumnElement]:
        return [c for c in ((column >= since) if since is not None else None,
                            (column < until) if until is not None else None) if c is not None]

    return or_(and_(*within(Image.captured_at)),
               and_(Image.captured_at.is_(None), *within(Image.uploaded_at)))


def _in_scope(scope: Optional[frozenset[str]]) -> ColumnElement:
    if scope is None:
        return literal(True)
    return Image.source_id.in_(select(Source.id).where(Source.name.in_(sorted(scope))))


def _has(row: Any, *where: ColumnElement) -> ColumnElement:
    return exists().where(row.image_id == Image.id, *where)


def search_images(conn: Connection, q: Search, scope: Optional[frozenset[str]]) -> tuple[list[dict[str, Any]],
                                                                                          Optional[int]]:
    """One page of images matching ``q`` within ``scope``, newest first; and the cursor of the next page."""
    where: list[ColumnElement] = [_in_scope(scope)]
    if q.source is not None:
        where.append(Image.source_id == select(Source.id).where(Source.name == q.source).scalar_subquery())
    if q.since is not None or q.until is not None:
        where.append(seen_between(q.since, q.until))
    score = (lambda row: [row.score >= q.min_score]) if q.min_score is not None else (lambda row: [])
    if q.label is not None:
        where.append(_has(ObjectRow, ObjectRow.label == q.label, *score(ObjectRow)))
    if q.text is not None:
        pattern = "%" + q.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append(_has(TextLineRow, TextLineRow.text.ilike(pattern, escape="\\"), *score(TextLineRow)))
    if q.min_score is not None and q.label is None and q.text is None:
        where.append(or_(*(_has(row, row.score >= q.min_score) for row in SCORED)))
    if q.barcode is not None:
        where.append(_has(BarcodeRow, BarcodeRow.value == q.barcode))
    if q.status is not None:
        where.append(exists().where(Job.image_id == Image.id, Job.status == q.status))
    if q.check is not None:  # an answer to that check (VL2 checks), passed or failed if asked
        where.append(_has(AnswerRow, AnswerRow.check_name == q.check,
                          *([] if q.passed is None else [AnswerRow.passed.is_(q.passed)])))
    if q.before_id is not None:
        where.append(Image.id < q.before_id)
    limit = max(1, min(q.limit, MAX_PAGE))
    ids = list(conn.scalars(select(Image.id).where(and_(*where)).order_by(Image.id.desc()).limit(limit + 1)))
    more = len(ids) > limit
    ids = ids[:limit]
    return summaries(conn, ids), (ids[-1] if more else None)


def summaries(conn: Connection, ids: list[int]) -> list[dict[str, Any]]:
    """Each image of ``ids`` (in that order) with its source, latest job and counts of result rows."""
    if not ids:
        return []
    rows = {r.id: r for r in conn.execute(
        select(Image.id, Image.key, Image.width, Image.height, Image.captured_at, Image.uploaded_at,
               Source.name.label("source"))
        .outerjoin(Source, Source.id == Image.source_id).where(Image.id.in_(ids)))}
    latest = (select(Job.image_id, func.max(Job.id).label("job_id")).where(Job.image_id.in_(ids))
              .group_by(Job.image_id).subquery())
    jobs = {r.image_id: r for r in conn.execute(
        select(Job.image_id, Job.id, Job.status, Job.error).join(latest, latest.c.job_id == Job.id))}
    counts: dict[int, dict[str, int]] = {i: {} for i in ids}
    for kind, row in (("objects", ObjectRow), ("text_lines", TextLineRow), ("barcodes", BarcodeRow)):
        for image_id, n in conn.execute(select(row.image_id, func.count()).where(row.image_id.in_(ids))
                                        .group_by(row.image_id)):
            counts[image_id][kind] = n
    out = []
    for i in ids:
        r, j = rows[i], jobs.get(i)
        out.append({"id": r.id, "key": r.key, "source": r.source, "width": r.width, "height": r.height,
                    "captured_at": r.captured_at, "uploaded_at": r.uploaded_at,
                    "job": None if j is None else {"id": j.id, "status": j.status, "error": j.error},
                    "counts": {k: counts[i].get(k, 0) for k in ("objects", "text_lines", "barcodes")}})
    return out


def image_source(conn: Connection, image_id: int) -> tuple[bool, Optional[str]]:
    """(exists, source name) of an image."""
    row = conn.execute(select(Image.id, Source.name).outerjoin(Source, Source.id == Image.source_id)
                       .where(Image.id == image_id)).first()
    return (row is not None, row.name if row is not None else None)


def list_jobs(conn: Connection, scope: Optional[frozenset[str]], status: Optional[str] = None,
              before_id: Optional[int] = None, limit: int = 50) -> tuple[dict[str, int], list[dict[str, Any]],
                                                                          Optional[int]]:
    """Counts by status, and one page of jobs (newest first) with their reasons, within ``scope``."""
    base = [_in_scope(scope)]
    counts = {s: 0 for s in ("queued", "running", "succeeded", "failed")}
    counts.update(dict(conn.execute(select(Job.status, func.count()).join(Image, Image.id == Job.image_id)
                                    .where(*base).group_by(Job.status)).all()))
    where = list(base)
    if status is not None:
        where.append(Job.status == status)
    if before_id is not None:
        where.append(Job.id < before_id)
    limit = max(1, min(limit, MAX_PAGE))
    rows = conn.execute(
        select(Job.id, Job.image_id, Image.key, Source.name.label("source"), Job.queue, Job.profile, Job.status,
               Job.error, Job.attempts, Job.queued_at, Job.started_at, Job.finished_at, Job.timings)
        .join(Image, Image.id == Job.image_id).outerjoin(Source, Source.id == Image.source_id)
        .where(*where).order_by(Job.id.desc()).limit(limit + 1)).all()
    items = [dict(r._mapping) for r in rows[:limit]]
    return counts, items, (items[-1]["id"] if len(rows) > limit else None)


def deliveries(conn: Connection, scope: Optional[frozenset[str]], dead_limit: int = 50) -> dict[str, Any]:
    """Per webhook subscription and connector: deliveries by status and the oldest pending one; and the latest
    dead-lettered deliveries with their errors. Scoped callers see only deliveries of their sources' events."""
    out: dict[str, Any] = {}
    for kind, d, t, fk in (("webhooks", WebhookDelivery, WebhookSubscription, WebhookDelivery.subscription_id),
                           ("connectors", ConnectorDelivery, ConnectorTarget, ConnectorDelivery.connector_id)):
        visible = [d.event_id.in_(select(OutboxEvent.id).join(Job, Job.id == OutboxEvent.job_id)
                                  .join(Image, Image.id == Job.image_id).where(_in_scope(scope)))]
        targets = {r.id: {"name": r.name, "active": r.active, "counts": {s.value: 0 for s in DeliveryStatus},
                          "oldest_pending": None}
                   for r in conn.execute(select(t.id, t.name, t.active).order_by(t.name))}
        for target_id, status, n, oldest in conn.execute(
                select(fk, d.status, func.count(), func.min(d.created_at)).where(*visible).group_by(fk, d.status)):
            targets[target_id]["counts"][status] = n
            if status == DeliveryStatus.pending.value:
                targets[target_id]["oldest_pending"] = oldest
        dead = conn.execute(
            select(t.name, d.id, OutboxEvent.event_id, OutboxEvent.type, OutboxEvent.job_id, d.attempts,
                   d.last_attempt_at, d.last_error)
            .join(t, t.id == fk).join(OutboxEvent, OutboxEvent.id == d.event_id)
            .where(d.status == DeliveryStatus.dead.value, *visible).order_by(d.id.desc()).limit(dead_limit)).all()
        out[kind] = {"targets": list(targets.values()),
                     "dead": [{"target": r.name, "delivery_id": r.id, "event_id": r.event_id, "type": r.type,
                               "job_id": r.job_id, "attempts": r.attempts, "last_attempt_at": r.last_attempt_at,
                               "last_error": r.last_error} for r in dead]}
    return out
