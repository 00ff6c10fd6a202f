"""Ingestion by bucket notification: parsers for each event format, converging on the idempotent register.

Formats (each parser is pure: a decoded document in, ``ObjectEvent``s out, ``NotificationError`` on anything
it cannot read):

- ``parse_s3_event``: S3 event JSON ``{"Records": [...]}`` as AWS S3 and MinIO send it, also MinIO's webhook
  target body ``{"EventName", "Key", "Records"}``, an SNS envelope around it, and the ``s3:TestEvent`` (no events).
  Object keys arrive form-encoded (``+`` for space, ``%2B`` for ``+``) and are decoded with ``unquote_plus``.
- ``parse_minio_redis``: MinIO's Redis target. ``access`` format: each list entry (RPUSH) is a JSON array
  ``[{"Event": [records...], "EventTime": "..."}]``; ``namespace`` format: a hash whose field is
  ``bucket/key`` and whose value is ``{"Records": [record]}`` (a delete removes the field: HDEL).
- ``parse_seaweed_filer``: the SeaweedFS filer's webhook notifier (``[notification.webhook]``), which POSTs
  ``{"key": "/buckets/<bucket>/<key>", "event_type": "create|update|delete|rename", "message": {"old_entry",
  "new_entry", "new_parent_path", ...}}`` (protobuf ``EventNotification`` as JSON, bytes fields base64); the
  S3 ETag is the entry's ``Seaweed-X-Amz-ETag`` extended attribute. Paths are plain, not URL-encoded.

``ingest_events`` applies events. The choices, so that every path registers exactly what the scanner would:

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

import base64
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Literal, Optional, Sequence
from urllib.parse import unquote_plus

from services.config import AppConfig
from services.db import session_scope
from services.ingest.register import SendJob, known_etags, register_and_send
from services.storage import BadKey, ObjectInfo, check_key

log = logging.getLogger(__name__)

Kind = Literal["created", "removed"]
SEAWEED_BUCKETS_DIR = "/buckets"
SEAWEED_ETAG_KEY = "Seaweed-X-Amz-ETag"  # weed/s3api/s3_constants ExtETagKey


class NotificationError(ValueError):
    """A notification document that cannot be read; the message says why."""


@dataclass(frozen=True)
class ObjectEvent:
    kind: Kind
    bucket: str
    key: str
    etag: Optional[str] = None
    size: Optional[int] = None
    sequencer: Optional[str] = None
    event_time: Optional[datetime] = None
    version_id: Optional[str] = None
    name: str = ""  # the producer's event name, e.g. "s3:ObjectCreated:Put" or "seaweedfs:create"


# ---- helpers ------------------------------------------------------------------------------------------------

def _loads(doc: Any) -> Any:
    if isinstance(doc, (bytes, bytearray)):
        try:
            doc = doc.decode("utf-8")
        except UnicodeDecodeError:
            raise NotificationError("body is not UTF-8") from None
    if isinstance(doc, str):
        try:
            return json.loads(doc)
        except json.JSONDecodeError as exc:
            raise NotificationError(f"body is not JSON: {exc}") from None
    return doc


def _time(value: Any, where: str) -> Optional[datetime]:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise NotificationError(f"{where}: eventTime must be a string")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise NotificationError(f"{where}: eventTime {value!r} is not an ISO 8601 time") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise NotificationError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise NotificationError(f"{where}: expected a non-empty string")
    return value


def _opt_int(value: Any, where: str) -> Optional[int]:
    if value in (None, ""):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise NotificationError(f"{where}: expected an integer, got {value!r}") from None
    if n < 0:
        raise NotificationError(f"{where}: negative size {n}")
    return n


def sequencer_order(seq: Optional[str]) -> tuple[int, str]:
    """Sort key for S3 sequencers of one key: hex strings compared after left-padding to equal length."""
    s = (seq or "").upper()
    return (len(s.lstrip("0")), s.lstrip("0"))


# ---- S3 / MinIO ---------------------------------------------------------------------------------------------

def _record(rec: Any, where: str) -> Optional[ObjectEvent]:
    rec = _mapping(rec, where)
    name = _str(rec.get("eventName"), f"{where}.eventName")
    short = name.removeprefix("s3:")
    if short.startswith("ObjectCreated:"):
        kind: Kind = "created"
    elif short.startswith("ObjectRemoved:"):
        kind = "removed"
    else:  # ObjectAccessed:*, Replication:*, LifecycleTransition...: nothing to register
        return None
    s3 = _mapping(rec.get("s3"), f"{where}.s3")
    bucket = _str(_mapping(s3.get("bucket"), f"{where}.s3.bucket").get("name"), f"{where}.s3.bucket.name")
    obj = _mapping(s3.get("object"), f"{where}.s3.object")
    raw_key = _str(obj.get("key"), f"{where}.s3.object.key")
    key = unquote_plus(raw_key, errors="strict")  # S3 and MinIO form-encode keys: '+' is a space
    etag = obj.get("eTag") or obj.get("etag")
    if etag is not None and not isinstance(etag, str):
        raise NotificationError(f"{where}.s3.object.eTag: expected a string")
    return ObjectEvent(
        kind=kind, bucket=bucket, key=key, etag=(etag.strip('"') or None) if etag else None,
        size=_opt_int(obj.get("size"), f"{where}.s3.object.size"),
        sequencer=obj.get("sequencer") or None, event_time=_time(rec.get("eventTime"), where),
        version_id=obj.get("versionId") or None, name=name,
    )


def _records(records: Any, where: str) -> list[ObjectEvent]:
    if not isinstance(records, list):
        raise NotificationError(f"{where}: 'Records' must be a list")
    out = []
    for i, rec in enumerate(records):
        try:
            ev = _record(rec, f"{where}[{i}]")
        except UnicodeDecodeError:
            raise NotificationError(f"{where}[{i}].s3.object.key: URL-encoding is not UTF-8") from None
        if ev is not None:
            out.append(ev)
    return out


def parse_s3_event(doc: Any) -> list[ObjectEvent]:
    """Events of an S3 event document (AWS S3, MinIO webhook target, SNS envelope). A test event gives []."""
    d = _mapping(_loads(doc), "document")
    if d.get("Type") == "Notification" and isinstance(d.get("Message"), str):  # SNS delivers the JSON as a string
        return parse_s3_event(d["Message"])
    if d.get("Event") == "s3:TestEvent":
        return []
    if "Records" not in d:
        raise NotificationError("document: no 'Records' (not an S3 event notification)")
    return _records(d["Records"], "Records")


def parse_minio_redis(entry: Any, format: str = "access") -> list[ObjectEvent]:  # noqa: A002
    """Events of one MinIO Redis-target entry: a list element (``access``) or a hash value (``namespace``)."""
    d = _loads(entry)
    if format == "access":
        if not isinstance(d, list):
            raise NotificationError("access entry: expected a JSON array of {Event, EventTime}")
        out: list[ObjectEvent] = []
        for i, item in enumerate(d):
            item = _mapping(item, f"[{i}]")
            if "Event" not in item:
                raise NotificationError(f"[{i}]: no 'Event' list")
            out.extend(_records(item["Event"], f"[{i}].Event"))
        return out
    if format == "namespace":
        d = _mapping(d, "namespace value")
        if "Records" not in d:
            raise NotificationError("namespace value: no 'Records'")
        return _records(d["Records"], "Records")
    raise NotificationError(f"unknown MinIO Redis format {format!r} (known: access, namespace)")


# ---- SeaweedFS filer ----------------------------------------------------------------------------------------

def _split_path(path: str, buckets_dir: str) -> Optional[tuple[str, str]]:
    """``/buckets/b/k/e/y`` -> ("b", "k/e/y"); None outside the buckets folder or for the bucket itself."""
    base = buckets_dir.rstrip("/") + "/"
    if not path.startswith(base):
        return None
    bucket, _, key = path[len(base):].partition("/")
    if not bucket or not key or key.startswith(".uploads/") or key == ".uploads":
        return None
    return bucket, key


def _entry_size(entry: dict) -> Optional[int]:
    attrs = entry.get("attributes") or {}
    return _opt_int(attrs.get("file_size"), "attributes.file_size") if isinstance(attrs, dict) else None


def _entry_time(entry: dict) -> Optional[datetime]:
    attrs = entry.get("attributes") or {}
    mtime = attrs.get("mtime") if isinstance(attrs, dict) else None
    return datetime.fromtimestamp(int(mtime), timezone.utc) if isinstance(mtime, (int, float)) and mtime else None


def _entry_s3_etag(entry: dict) -> Optional[str]:
    """The S3 ETag SeaweedFS's S3 gateway stored in the entry (``extended["Seaweed-X-Amz-ETag"]``, base64)."""
    ext = entry.get("extended")
    raw = ext.get(SEAWEED_ETAG_KEY) if isinstance(ext, dict) else None
    if not isinstance(raw, str) or not raw:
        return None
    try:
        value = base64.b64decode(raw, validate=True).decode("ascii").strip().strip('"')
    except (ValueError, UnicodeDecodeError):
        return None
    return value or None


def parse_seaweed_filer(doc: Any, buckets_dir: str = SEAWEED_BUCKETS_DIR) -> list[ObjectEvent]:
    """Events of one SeaweedFS filer webhook POST. Directories and paths outside ``buckets_dir`` give [].

    Paths are plain (not URL-encoded). The S3 ETag comes from the entry's ``Seaweed-X-Amz-ETag`` extended
    attribute where the S3 gateway wrote the object; entries written through the filer directly have none,
    and ``ingest_events`` stats them, so the register key is always the ETag S3 reports.
    """
    d = _mapping(_loads(doc), "document")
    path = _str(d.get("key"), "key")
    etype = _str(d.get("event_type"), "event_type")
    if etype not in ("create", "update", "delete", "rename"):
        raise NotificationError(f"event_type: unknown {etype!r} (known: create, update, delete, rename)")
    msg = _mapping(d.get("message", d.get("message_data")), "message")
    old = msg.get("old_entry")
    new = msg.get("new_entry")
    for name, e in (("old_entry", old), ("new_entry", new)):
        if e is not None:
            _mapping(e, f"message.{name}")
    if etype in ("create", "update") and new is None:
        raise NotificationError(f"message: a {etype} event without new_entry")
    if etype in ("delete", "rename") and old is None:
        raise NotificationError(f"message: a {etype} event without old_entry")
    if not path.startswith("/"):
        raise NotificationError(f"key: {path!r} is not an absolute filer path")
    out: list[ObjectEvent] = []
    label = f"seaweedfs:{etype}"
    if etype in ("delete", "rename") and not old.get("is_directory"):
        where = _split_path(path, buckets_dir)
        if where:
            out.append(ObjectEvent("removed", where[0], where[1], name=label, event_time=_entry_time(old)))
    if etype in ("create", "update", "rename") and not new.get("is_directory"):
        new_path = path
        if etype == "rename":
            parent = msg.get("new_parent_path") or path.rsplit("/", 1)[0]
            new_path = parent.rstrip("/") + "/" + _str(new.get("name"), "message.new_entry.name")
        where = _split_path(new_path, buckets_dir)
        if where:
            out.append(ObjectEvent("created", where[0], where[1], etag=_entry_s3_etag(new), size=_entry_size(new),
                                   event_time=_entry_time(new), name=label))
    return out


# ---- applying events ----------------------------------------------------------------------------------------

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
    db_url: str, config: AppConfig, store, events: Iterable[ObjectEvent], send_job: SendJob,  # noqa: ANN001
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
    with_etag = [(k, e.etag) for k, e in latest.items() if e.etag]
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


def ingest_document(
    db_url: str, config: AppConfig, store, fmt: str, doc: Any, send_job: SendJob,  # noqa: ANN001
    verify: bool = True, buckets_dir: str = SEAWEED_BUCKETS_DIR,
) -> IngestCounts:
    """Parse one document of format ``fmt`` (s3, seaweedfs, minio-redis-access, minio-redis-namespace), ingest."""
    events: Sequence[ObjectEvent]
    if fmt == "s3":
        events = parse_s3_event(doc)
    elif fmt == "seaweedfs":
        events = parse_seaweed_filer(doc, buckets_dir)
    elif fmt == "minio-redis-access":
        events = parse_minio_redis(doc, "access")
    elif fmt == "minio-redis-namespace":
        events = parse_minio_redis(doc, "namespace")
    else:
        raise NotificationError(f"unknown format {fmt!r}")
    return ingest_events(db_url, config, store, events, send_job, verify=verify)

