"""Registration: every path in (upload, scan, notifications) converges on one idempotent ``register``.

One transaction writes the image row and its job row (status ``queued``), keyed by (bucket, key, etag); only
after commit is the Celery task sent, carrying the job id. A send that fails leaves the job queued with no
``sent_at``: the reconciler re-sends it.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol, Sequence

from sqlalchemy import insert, select, tuple_, update
from sqlalchemy.orm import Session

from services.config import AppConfig
from services.db import insert_ignore, session_scope
from services.schema import Image, Job, Source, utcnow

log = logging.getLogger(__name__)

SendJob = Callable[[list[int], str], None]  # (job_ids, queue) -> sends one analyze task for those jobs
TASK_JOBS = 16  # job ids per task message


class ObjectLike(Protocol):
    key: str
    etag: str
    size: int
    last_modified: Optional[datetime]
    content_type: Optional[str]


@dataclass(frozen=True)
class Registered:
    image_id: int
    job_id: Optional[int]  # None when the object was already registered
    key: str
    queue: Optional[str] = None  # the new job's queue

    @property
    def created(self) -> bool:
        return self.job_id is not None


def ensure_sources(session: Session, config: AppConfig) -> dict[str, int]:
    """Create or update a row per configured source; returns name -> id."""
    now = utcnow()
    for name, src in config.sources.items():
        insert_ignore(session, Source, [{"name": name, "profile": src.profile, "prefix": src.prefix,
                                         "created_at": now}], keys=["name"])
        session.execute(update(Source).where(Source.name == name).values(profile=src.profile, prefix=src.prefix))
    return dict(session.execute(select(Source.name, Source.id)).all())


def register_objects(
    session: Session, config: AppConfig, bucket: str, objects: Sequence[ObjectLike], source: Optional[str] = None,
    source_ids: Optional[dict[str, int]] = None,
) -> list[Registered]:
    """Idempotently register objects in the caller's transaction (a few statements per batch, not per object).
    ``source`` overrides prefix matching. The same (key, etag) twice in one batch registers once. ``source_ids``:
    what ``ensure_sources`` returned for this config in an earlier transaction (one upload's batches share it)."""
    if not objects:
        return []
    if source is not None:
        config = config.with_source(source)
    if source_ids is None:
        source_ids = ensure_sources(session, config)
    conn = session.connection()  # Core statements in the session's transaction: no ORM bulk machinery per row
    now = utcnow()
    unique: dict[tuple[str, str], ObjectLike] = {}
    for obj in objects:
        unique.setdefault((obj.key, obj.etag), obj)
    sources = {k: source or config.source_for_key(k[0]) for k in unique}
    rows = [{"source_id": source_ids.get(sources[k]) if sources[k] else None, "bucket": bucket, "key": o.key,
             "etag": o.etag, "size": o.size, "content_type": o.content_type, "uploaded_at": o.last_modified,
             "registered_at": now} for k, o in unique.items()]
    images, jobs_table = Image.__table__, Job.__table__
    created = {(key, etag): image_id for image_id, key, etag in insert_ignore(
        conn, images, rows, keys=["bucket", "key", "etag"], returning=(images.c.id, images.c.key, images.c.etag))}
    existing = _registered(conn, bucket, [k for k in unique if k not in created])
    jobs: dict[int, tuple[int, str]] = {}  # image id -> (job id, queue)
    if created:
        job_rows = []
        for k, image_id in created.items():
            profile_name = config.profile_name(sources[k])
            job_rows.append({"image_id": image_id, "profile": profile_name, "status": "queued", "attempts": 0,
                             "queue": config.profiles[profile_name].queue_name, "queued_at": now})
        inserted = conn.execute(insert(jobs_table).returning(jobs_table.c.id, jobs_table.c.image_id,
                                                             jobs_table.c.queue), job_rows)
        jobs = {image_id: (job_id, queue) for job_id, image_id, queue in inserted}
    out: list[Registered] = []
    for obj in objects:
        k = (obj.key, obj.etag)
        if k in created and created[k] in jobs:
            job_id, queue = jobs.pop(created[k])
            out.append(Registered(created[k], job_id, obj.key, queue))
        else:  # already registered (earlier, or earlier in this batch): one image, one job
            out.append(Registered(created.get(k) or existing[k], None, obj.key))
    return out


def known_etags(session: Session, bucket: str, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (key, etag) pairs are already registered in ``bucket``."""
    return set(_registered(session.connection(), bucket, list(keys)))


def _registered(conn: Any, bucket: str, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """(key, etag) -> image id of those of ``pairs`` registered in ``bucket`` (500 pairs a statement)."""
    images = Image.__table__
    found: dict[tuple[str, str], int] = {}
    for i in range(0, len(pairs), 500):
        found.update({(key, etag): image_id for image_id, key, etag in conn.execute(
            select(images.c.id, images.c.key, images.c.etag).where(
                images.c.bucket == bucket, tuple_(images.c.key, images.c.etag).in_(pairs[i : i + 500])))})
    return found


def send_registered(db_url: str, registered: Iterable[Registered], send_job: SendJob) -> int:
    """After commit: send the new jobs (a task per queue and ``TASK_JOBS`` ids) and stamp ``sent_at``."""
    new = [r for r in registered if r.job_id is not None]
    if not new:
        return 0
    queues = {r.job_id: r.queue for r in new if r.queue is not None}
    if len(queues) < len(new):
        with session_scope(db_url) as s:
            queues = dict(s.execute(select(Job.id, Job.queue).where(Job.id.in_([r.job_id for r in new]))).all())
    return send_in_chunks(db_url, [(r.job_id, queues[r.job_id]) for r in new], send_job)


def send_in_chunks(db_url: str, jobs: Sequence[tuple[int, str]], send_job: SendJob) -> int:
    """Send (job_id, queue) pairs as tasks of up to ``TASK_JOBS`` ids per queue; stamp ``sent_at`` on those sent.
    A send that fails (broker down) leaves its jobs without ``sent_at``: the reconciler re-sends them."""
    by_queue: dict[str, list[int]] = {}
    for job_id, queue in jobs:
        by_queue.setdefault(queue, []).append(job_id)
    sent: list[int] = []
    for queue, ids in by_queue.items():
        for i in range(0, len(ids), TASK_JOBS):
            chunk = ids[i : i + TASK_JOBS]
            try:
                send_job(chunk, queue)
                sent.extend(chunk)
            except Exception as exc:  # noqa: BLE001 - broker down: the reconciler re-sends
                log.warning("could not send jobs %s (%s); the reconciler will re-send them", chunk, exc)
    if sent:
        with session_scope(db_url) as s:
            s.execute(update(Job).where(Job.id.in_(sent)).values(sent_at=utcnow()))
    return len(sent)


def register_and_send(
    db_url: str, config: AppConfig, bucket: str, objects: Sequence[ObjectLike], send_job: SendJob,
    source: Optional[str] = None, source_ids: Optional[dict[str, int]] = None,
) -> list[Registered]:
    with session_scope(db_url) as s:
        registered = register_objects(s, config, bucket, objects, source, source_ids)
    send_registered(db_url, registered, send_job)
    return registered


# ---- upload and scan ---------------------------------------------------------------------------------------

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}


def iter_upload_files(paths: Iterable[Path]) -> Iterator[tuple[Path, str]]:
    """(file, relative name) for each image file; folders recurse in sorted order."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    yield f, f.relative_to(p).as_posix()
        elif p.is_file():
            yield p, p.name
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass
class UploadReport:
    uploaded: int = 0
    skipped: int = 0  # already registered with the same content
    registered: list[Registered] | None = None


def upload(
    db_url: str, config: AppConfig, store, paths: Sequence[Path], source: str, send_job: SendJob,  # noqa: ANN001
    progress: Optional[Callable[[int], None]] = None, batch: int = 32,
) -> UploadReport:
    """Put files into the bucket under the source's prefix and register them; already registered ones skip.
    Per batch of ``batch`` files: a select of those known already, the puts (8 at a time), one transaction that
    registers them, the tasks, and the stamp of ``sent_at``."""
    config = config.with_source(source)
    prefix = config.sources[source].prefix
    report = UploadReport(registered=[])
    files = list(iter_upload_files(paths))
    source_ids: Optional[dict[str, int]] = None
    with ThreadPoolExecutor(8) as pool:  # object storage is I/O: put concurrently
        for i in range(0, len(files), batch):
            chunk = files[i : i + batch]
            blobs = [(f, prefix + rel, f.read_bytes()) for f, rel in chunk]
            digests = [md5_hex(data) for _, _, data in blobs]
            with session_scope(db_url) as s:
                known = known_etags(s, store.bucket, [(key, md5) for (_, key, _), md5 in zip(blobs, digests)])
                if source_ids is None:
                    source_ids = ensure_sources(s, config)
            todo = [(f, key, data) for (f, key, data), md5 in zip(blobs, digests) if (key, md5) not in known]
            report.skipped += len(blobs) - len(todo)
            infos = list(pool.map(lambda t: store.put(t[1], t[2], content_type=_content_type(t[0])), todo))
            if infos:
                regs = register_and_send(db_url, config, store.bucket, infos, send_job, source, source_ids)
                report.uploaded += sum(r.created for r in regs)
                report.skipped += sum(not r.created for r in regs)
                report.registered.extend(regs)
            if progress:
                progress(len(chunk))
    return report


def _content_type(path: Path) -> str:
    return {
        ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif", ".bmp": "image/bmp",
        ".tif": "image/tiff", ".tiff": "image/tiff", ".webp": "image/webp",
    }.get(path.suffix.lower(), "application/octet-stream")


def scan(db_url: str, config: AppConfig, store, send_job: SendJob, prefix: str = "", batch: int = 500) -> int:  # noqa: ANN001
    """Register every object under ``prefix`` that is not registered yet (the fallback for missed events)."""
    created = 0
    pending: list = []

    def flush() -> None:
        nonlocal created
        with session_scope(db_url) as s:
            known = known_etags(s, store.bucket, [(o.key, o.etag) for o in pending])
        fresh = [o for o in pending if (o.key, o.etag) not in known]
        if fresh:
            created += sum(r.created for r in register_and_send(db_url, config, store.bucket, fresh, send_job))
        pending.clear()

    for obj in store.list(prefix):
        if obj.key.endswith("/"):
            continue
        pending.append(obj)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return created
