"""Ingestion by bucket notification: ``ingest_events`` applies the ``ObjectEvent``s that
``services.ingest.bucket_events`` parsed. The choices, so that every path registers exactly what the scanner
would:

- A *created* event is checked against the store with a stat (one per key per batch) unless ``verify=False``
  and the event carries an ETag: the register key is then the ETag the scanner sees, an object deleted since
  (an out-of-order delete, or a create replayed after the delete) is skipped, and an object overwritten since
  is registered as its current version. Before the stat, an (bucket, key, ETag) already registered is skipped
  without touching the store, so repeated events are cheap.
- A *removed* event is counted and logged, never analysed: results of an image already analysed stay (they
  describe what was in the bucket then), and a queued job whose object is gone fails with a reason when the
  worker cannot fetch it. Nothing is deleted from SQL by a notification.
- Events for another bucket than the store's are counted and ignored; folder markers (keys ending in ``/``),
  SeaweedFS directories and multipart staging entries (``.uploads/``) are ignored.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from services.config import AppConfig
from services.db import session_scope
from services.ingest.bucket_events import (
    SEAWEED_BUCKETS_DIR, NotificationError, ObjectEvent, parse_minio_redis, parse_s3_event, parse_seaweed_filer,
    sequencer_order,
)
from services.ingest.register import SendJob, known_etags, register_and_send
from services.storage import BadKey, ObjectInfo, ObjectStore, check_key

log = logging.getLogger(__name__)


@dataclass
class IngestCounts:
    received: int = 0  # events handed in
    registered: int = 0  # new jobs created
    already: int = 0  # (bucket, key, etag) already registered: a repeated event, or the scanner was first
    removed: int = 0  # ObjectRemoved / filer delete events: recorded, not analysed
    missing: int = 0  # created events for an object that no longer exists (deleted since)
    other_bucket: int = 0  # events for a bucket this service does not watch
    ignored: int = 0  # folder markers, keys the store cannot hold ('a//b', '../x')
    rejected: int = 0  # Redis entries that could not be read (the HTTP receiver answers 400 instead)
    keys: list[str] = field(default_factory=list)  # keys that got a new job in this call

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if k != "keys"}

    def add(self, other: "IngestCounts") -> None:
        """Add another call's counts (not its keys: running totals of a long-lived receiver stay small)."""
        for k, v in other.__dict__.items():
            if k != "keys":
                setattr(self, k, getattr(self, k) + v)


def ingest_events(
    db_url: str, config: AppConfig, store: ObjectStore, events: Iterable[ObjectEvent], send_job: SendJob,
    verify: bool = True,
) -> IngestCounts:
    """Register what ``events`` announce, once each; returns counts. See the module docstring for the rules."""
    counts = IngestCounts()
    latest: dict[str, ObjectEvent] = {}  # key -> the created event to act on (one stat per key)
    for ev in events:
        counts.received += 1
        if ev.bucket != store.bucket:
            counts.other_bucket += 1
            log.info("ignoring %s for bucket %r (watching %r)", ev.name or ev.kind, ev.bucket, store.bucket)
            continue
        if ev.key.endswith("/"):
            counts.ignored += 1
            continue
        try:
            check_key(ev.key)
        except BadKey as exc:
            counts.ignored += 1
            log.warning("ignoring %s: %s", ev.name or ev.kind, exc)
            continue
        if ev.kind == "removed":
            counts.removed += 1
            log.info("object removed: %s/%s (%s); kept in SQL, not analysed", ev.bucket, ev.key, ev.name)
            continue
        prev = latest.get(ev.key)
        if prev is None or sequencer_order(ev.sequencer) >= sequencer_order(prev.sequencer):
            latest[ev.key] = ev
        else:
            counts.already += 1  # an older event of the same key in this batch
    if not latest:
        return counts
    with_etag = [k for k, e in latest.items() if e.etag]
    if with_etag:
        with session_scope(db_url) as s:
            known = known_etags(s, store.bucket, with_etag)
    else:
        known = set()
    todo = []
    for key, ev in latest.items():
        if ev.etag and (key, ev.etag) in known:
            counts.already += 1
        else:
            todo.append(ev)
    to_stat = [ev.key for ev in todo if verify or not ev.etag or ev.size is None]
    if len(to_stat) > 1:
        with ThreadPoolExecutor(min(8, len(to_stat))) as pool:  # stats are I/O: a few at once
            stats = dict(zip(to_stat, pool.map(store.stat, to_stat)))
    else:
        stats = {k: store.stat(k) for k in to_stat}
    infos: list[ObjectInfo] = []
    for ev in todo:
        key = ev.key
        if key in stats:
            info = stats[key]
            if info is None:
                counts.missing += 1
                log.info("object %s/%s no longer exists (deleted after %s); skipped", store.bucket, key, ev.name)
                continue
            if ev.etag and info.etag != ev.etag:
                log.info("object %s/%s changed since %s (etag %s -> %s): registering the current version",
                         store.bucket, key, ev.name, ev.etag, info.etag)
        else:
            info = ObjectInfo(key, ev.etag, ev.size, ev.event_time, None)
        infos.append(info)
    if infos:
        for r in register_and_send(db_url, config, store.bucket, infos, send_job):
            if r.created:
                counts.registered += 1
                counts.keys.append(r.key)
            else:
                counts.already += 1
    return counts


def parse_document(fmt: str, doc: Any, buckets_dir: str = SEAWEED_BUCKETS_DIR) -> Sequence[ObjectEvent]:
    """The events of one document of format ``fmt`` (s3, seaweedfs, minio-redis-access, minio-redis-namespace).

    Pure: it reads nothing but ``doc``, so whatever it raises is about the document and raises again on a retry.
    """
    if fmt == "s3":
        return parse_s3_event(doc)
    if fmt == "seaweedfs":
        return parse_seaweed_filer(doc, buckets_dir)
    if fmt == "minio-redis-access":
        return parse_minio_redis(doc, "access")
    if fmt == "minio-redis-namespace":
        return parse_minio_redis(doc, "namespace")
    raise NotificationError(f"unknown format {fmt!r}")


def ingest_document(
    db_url: str, config: AppConfig, store: ObjectStore, fmt: str, doc: Any, send_job: SendJob,
    verify: bool = True, buckets_dir: str = SEAWEED_BUCKETS_DIR,
) -> IngestCounts:
    """Parse one document of format ``fmt`` (see ``parse_document``) and ingest its events."""
    events = parse_document(fmt, doc, buckets_dir)
    return ingest_events(db_url, config, store, events, send_job, verify=verify)
