"""The previous image of a source, for checks that compare two images (``with_previous: true``).

An image's previous image is the same source's last *successfully analysed* image (a succeeded job) before it, by
capture time, else upload time (``coalesce(captured_at, uploaded_at)``; equal times are ordered by image id).
Images of the same source analysed in one batch do not see each other (neither is analysed yet); the first image
of a source, and an image without a source, have none (their ``with_previous`` checks answer ``no_previous``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import tzinfo
from typing import Callable, Optional, Sequence

from PIL import Image as PILImage
from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session

from model.decode import CaptureTime
from services.db import session_scope
from services.schema import Image, Job, JobStatus, Source


@dataclass(frozen=True)
class PreviousRef:
    image_id: int
    key: str


@dataclass(frozen=True)
class Previous:
    """A job's previous image, fetched and decoded (upright RGB)."""

    image_id: int
    key: str
    image: PILImage.Image


def previous_images(db_url: str, items: Sequence[tuple[int, Optional[CaptureTime]]],
                    source_zone: Callable[[Optional[str]], tzinfo]) -> dict[int, PreviousRef]:
    """For ``(image id, capture time read from its bytes or None)`` pairs: image id -> its previous image, for
    those that have one. ``source_zone(source name)`` reads a capture time without an offset, as commit does."""
    out: dict[int, PreviousRef] = {}
    with session_scope(db_url) as s:
        for image_id, capture in items:
            ref = _previous(s, image_id, capture, source_zone)
            if ref is not None:
                out[image_id] = ref
    return out


def _previous(s: Session, image_id: int, capture: Optional[CaptureTime],
              source_zone: Callable[[Optional[str]], tzinfo]) -> Optional[PreviousRef]:
    cur = s.execute(select(Image.source_id, Image.uploaded_at, Source.name)
                    .outerjoin(Source, Source.id == Image.source_id).where(Image.id == image_id)).one()
    when = capture.in_utc(source_zone(cur.name)) if capture is not None else cur.uploaded_at
    if cur.source_id is None or when is None:
        return None
    at = func.coalesce(Image.captured_at, Image.uploaded_at)
    analysed = exists().where(Job.image_id == Image.id, Job.status == JobStatus.succeeded.value)
    row = s.execute(
        select(Image.id, Image.key)
        .where(Image.source_id == cur.source_id, Image.id != image_id, analysed,
               or_(at < when, and_(at == when, Image.id < image_id)))
        .order_by(at.desc(), Image.id.desc()).limit(1)).first()
    return PreviousRef(row.id, row.key) if row is not None else None
