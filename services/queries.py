"""Read helpers shared by the CLI, the demo and tests: find an image, list jobs, gather an image's results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.schema import RESULT_TABLES, AnswerRow, Image, Job, JobStatus


class NotFound(LookupError):
    pass


def find_image(session: Session, ref: str) -> Image:
    """An image by id (``42``) or by object key (the newest registration of that key)."""
    if ref.isdigit():
        image = session.get(Image, int(ref))
    else:
        image = session.execute(
            select(Image).where(Image.key == ref).order_by(Image.id.desc()).limit(1)
        ).scalar_one_or_none()
    if image is None:
        raise NotFound(f"no image with id or key {ref!r}")
    return image


def list_jobs(session: Session, status: Optional[str] = None, limit: int = 50) -> Sequence[tuple[Job, Image]]:
    q = select(Job, Image).join(Image, Job.image_id == Image.id).order_by(Job.id.desc()).limit(limit)
    if status:
        q = q.where(Job.status == status)
    return session.execute(q).all()


def job_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {s.value: 0 for s in JobStatus} | dict(rows)


@dataclass(frozen=True)
class ImageResults:
    image: Image
    job: Optional[Job]  # the image's latest succeeded job, else its latest job (queued, running or failed)
    rows: dict[str, list[dict[str, Any]]]  # kind -> rows (label/text/value, box, score, analyzer)
    answers: list[dict[str, Any]] = field(default_factory=list)  # answers to checks, in check order


_COLUMNS = {
    "objects": ("analyzer", "label", "phrase", "x1", "y1", "x2", "y2", "score", "attributes", "answer_id"),
    "text_lines": ("analyzer", "text", "x1", "y1", "x2", "y2", "score"),
    "barcodes": ("analyzer", "format", "value", "x1", "y1", "x2", "y2"),
}


def image_results(session: Session, image: Image) -> ImageResults:
    """The results of the image's latest succeeded job (a reprocess still queued does not hide them)."""
    job = session.execute(
        select(Job).where(Job.image_id == image.id)
        .order_by((Job.status == JobStatus.succeeded.value).desc(), Job.id.desc()).limit(1)
    ).scalar_one_or_none()
    rows: dict[str, list[dict[str, Any]]] = {}
    for kind, table in RESULT_TABLES.items():
        found = [] if job is None else session.execute(
            select(table).where(table.job_id == job.id).order_by(table.id)
        ).scalars().all()
        rows[kind] = [{c: getattr(r, c) for c in _COLUMNS[kind]} for r in found]
    answers = [] if job is None else session.execute(
        select(AnswerRow).where(AnswerRow.job_id == job.id).order_by(AnswerRow.id)).scalars().all()
    columns = ("id", "check_name", "kind", "status", "value_bool", "value_number", "value_text", "raw_text",
               "confidence", "expected", "passed", "severity", "paired_image_id")
    return ImageResults(image, job, rows, [{c: getattr(a, c) for c in columns} for a in answers])
