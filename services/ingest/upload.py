"""``vlwatch upload``: files into the bucket under a source's prefix, then registered like any other object.

Per batch of files: a select of those already known (same key and content), the PUTs (concurrently), one
transaction that registers the new ones, then their tasks.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

from services.config import AppConfig
from services.db import session_scope
from services.ingest.register import Registered, SendJob, ensure_sources, known_etags, register_and_send
from services.storage import ObjectStore

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
    db_url: str, config: AppConfig, store: ObjectStore, paths: Sequence[Path], source: str, send_job: SendJob,
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
