"""``vlwatch upload``: files into the bucket under a source's prefix, then registered like any other object.

One select (per 500 files) finds what is registered already under the files' keys; then per batch of files the
PUTs of the new ones (concurrently), one transaction that registers them, then their tasks; the batches overlap
(see ``upload``).
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

from services.config import AppConfig
from services.db import session_scope
from services.ingest.register import Registered, SendJob, ensure_sources, known_etags, register_and_send
from services.storage import ObjectInfo, ObjectStore

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
    registered: list[Registered] = field(default_factory=list)


def upload(
    db_url: str, config: AppConfig, store: ObjectStore, paths: Sequence[Path], source: str, send_job: SendJob,
    progress: Optional[Callable[[int], None]] = None, batch: int = 64, threads: int = 8, in_flight: int = 4,
) -> UploadReport:
    """Put files into the bucket under the source's prefix and register them; already registered ones skip.

    What is registered already under the files' keys is read once at the start. Then three things overlap so
    that the PUTs never wait for the database: the calling thread reads and hashes a batch of ``batch`` files and
    hands the PUTs of those not registered with the same content to ``threads`` threads; one registering thread
    takes the batches in order, waits for their PUTs, registers them (one transaction) and sends their tasks. At
    most ``in_flight`` batches are on their way at once, so memory stays bounded."""
    config = config.with_source(source)
    prefix = config.sources[source].prefix
    report = UploadReport()
    files = [(f, prefix + rel) for f, rel in iter_upload_files(paths)]
    with session_scope(db_url) as s:
        source_ids = ensure_sources(s, config)
        known = known_etags(s, store.bucket, [key for _, key in files])

    def register(n: int, puts: list[Future[ObjectInfo]]) -> None:
        infos = [f.result() for f in puts]
        if infos:
            regs = register_and_send(db_url, config, store.bucket, infos, send_job, source, source_ids)
            report.uploaded += sum(r.created for r in regs)
            report.skipped += sum(not r.created for r in regs)
            report.registered.extend(regs)
        if progress:
            progress(n)

    batches: deque[Future[None]] = deque()
    known_before = 0  # counted here, added to the report at the end (the registering thread owns the report)
    with ThreadPoolExecutor(threads, thread_name_prefix="vlwatch-upload") as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="vlwatch-register") as registrar:
        for i in range(0, len(files), batch):
            chunk = files[i : i + batch]
            blobs = [(f, key, f.read_bytes()) for f, key in chunk]
            todo = [(f, key, data) for f, key, data in blobs if (key, md5_hex(data)) not in known]
            known_before += len(blobs) - len(todo)
            puts = [pool.submit(store.put, key, data, content_type=_content_type(f)) for f, key, data in todo]
            batches.append(registrar.submit(register, len(chunk), puts))
            while len(batches) > in_flight or (batches and batches[0].done()):
                batches.popleft().result()  # re-raises a failed PUT or registration here
        while batches:
            batches.popleft().result()
    report.skipped += known_before
    return report


def _content_type(path: Path) -> str:
    return {
        ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif", ".bmp": "image/bmp",
        ".tif": "image/tiff", ".tiff": "image/tiff", ".webp": "image/webp",
    }.get(path.suffix.lower(), "application/octet-stream")
