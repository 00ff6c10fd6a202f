"""Reprocessing: new jobs for images already analysed (a new model version, a changed profile), sent like
registration's jobs, after commit.

Nothing is deleted: each job keeps its result rows and its lineage, and the ``current_*`` views switch to the new
job of an image's profile once it has succeeded. A job re-run after a lost worker still replaces only its own rows
(``workers.commit``); a new job adds rows. An image that already has a queued or running job of the profile is
skipped, so running reprocess twice before the workers catch up queues each image once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import exists, insert, select
from sqlalchemy.orm import Session, aliased

from services.config import AppConfig
from services.ingest.register import Registered
from services.schema import Image, Job, JobStatus, Source, utcnow


class ReprocessError(ValueError):
    """The source or profile is unknown; the message says which."""


def queue_reprocess(session: Session, config: AppConfig, source: str, since: Optional[datetime] = None,
                    profile: Optional[str] = None) -> list[Registered]:
    """Queue a job of ``profile`` (default: the source's profile in the YAML file) for every image of ``source``
    that has a succeeded job, registered at or after ``since``; in the caller's transaction. Returns the new jobs
    (stamped sent: send them with ``register.send_registered`` after commit)."""
    source_id = session.execute(select(Source.id).where(Source.name == source)).scalar_one_or_none()
    if source_id is None:
        raise ReprocessError(f"no source {source!r} in the database (sources are made when images register)")
    if profile is None:
        if source not in config.sources:
            raise ReprocessError(f"source {source!r} is not in the configuration file: name a --profile")
        profile = config.sources[source].profile
    if profile not in config.profiles:
        raise ReprocessError(f"unknown profile {profile!r} (configured: {', '.join(config.profiles)})")
    queue = config.profiles[profile].queue_name
    done, pending = aliased(Job), aliased(Job)
    query = select(Image.id).where(
        Image.source_id == source_id,
        exists().where(done.image_id == Image.id, done.status == JobStatus.succeeded.value),
        ~exists().where(pending.image_id == Image.id, pending.profile == profile,
                        pending.status.in_([JobStatus.queued.value, JobStatus.running.value])),
    ).order_by(Image.id)
    if since is not None:
        query = query.where(Image.registered_at >= since)
    image_ids = session.execute(query).scalars().all()
    if not image_ids:
        return []
    now = utcnow()
    jobs = Job.__table__
    rows = session.connection().execute(insert(jobs).returning(jobs.c.id, jobs.c.image_id), [
        {"image_id": i, "profile": profile, "queue": queue, "status": JobStatus.queued.value, "attempts": 0,
         "queued_at": now, "sent_at": now} for i in image_ids])
    keys = dict(session.execute(select(Image.id, Image.key).where(Image.id.in_(image_ids))).all())
    return [Registered(image_id, job_id, keys[image_id], queue) for job_id, image_id in rows]
