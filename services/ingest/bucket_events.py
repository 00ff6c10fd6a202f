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

Every parser reads untrusted documents: anything malformed (deep nesting, ``Infinity``/``NaN``, wrong types,
out-of-range numbers or times, keys S3 would not store: over 1,024 bytes or holding NUL) is a
``NotificationError``, never another exception, so a listener can answer 400 to it.

What is done with the events: ``services.ingest.event_ingest``.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, Optional
from urllib.parse import unquote_plus

log = logging.getLogger(__name__)

Kind = Literal["created", "removed"]
SEAWEED_BUCKETS_DIR = "/buckets"
SEAWEED_ETAG_KEY = "Seaweed-X-Amz-ETag"  # weed/s3api/s3_constants ExtETagKey
MAX_KEY_BYTES = 1024  # S3's limit on object keys (and the width of images.key)
MAX_NAME_CHARS = 255  # bucket names (S3: 63), ETags, version ids, sequencers: far below this in practice
MAX_SIZE = 2**63 - 1  # a BIGINT


class NotificationError(ValueError):
    """A notification document that cannot be read; the message says why."""


_SURROGATE = re.compile("[\ud800-\udfff]")  # the only str characters that UTF-8 cannot encode


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

    def __post_init__(self) -> None:
        """The last check of every event, whoever built it: text is UTF-8 (JSON's ``"\\ud800"`` escapes carry
        lone surrogates that no store or database takes), a size fits a BIGINT. The parsers check each value
        where it is read and name its place in the document; this only says which field."""
        texts = {"bucket": self.bucket, "key": self.key, "name": self.name, "etag": self.etag,
                 "sequencer": self.sequencer, "version_id": self.version_id}
        for field_name, value in texts.items():
            if value is None and field_name in ("etag", "sequencer", "version_id"):
                continue
            if not isinstance(value, str) or _SURROGATE.search(value):
                raise NotificationError(f"{field_name}: expected UTF-8 text, got {value!r:.60}")
        size = self.size
        if size is not None and (type(size) is not int or not 0 <= size <= MAX_SIZE):
            raise NotificationError(f"size: expected a byte count, got {size!r:.40}")
        if self.event_time is not None and not isinstance(self.event_time, datetime):
            raise NotificationError(f"event_time: expected a time, got {self.event_time!r:.40}")


# ---- helpers ------------------------------------------------------------------------------------------------

def _loads(doc: Any) -> Any:
    if isinstance(doc, (bytes, bytearray)):
        try:
            doc = doc.decode("utf-8")
        except UnicodeDecodeError:
            raise NotificationError("body is not UTF-8") from None
    if isinstance(doc, str):
        try:
            return json.loads(doc, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            raise NotificationError(f"body is not JSON: {exc}") from None
        except RecursionError:
            raise NotificationError("body is nested too deeply") from None
    return doc


def _no_constant(name: str) -> Any:
    raise NotificationError(f"body is not JSON: {name} is not a JSON number")


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


def _opt_str(value: Any, where: str) -> Optional[str]:
    """An optional short string (ETag, version id, sequencer): None when absent or empty."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or len(value) > MAX_NAME_CHARS:
        raise NotificationError(f"{where}: expected a string of at most {MAX_NAME_CHARS} characters")
    return value


def _key(key: str, where: str) -> str:
    """An object key as S3 stores them: at most 1,024 bytes of UTF-8, no NUL."""
    if "\x00" in key or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise NotificationError(f"{where}: not an S3 object key (NUL, or over {MAX_KEY_BYTES} bytes)")
    return key


def _opt_int(value: Any, where: str) -> Optional[int]:
    if value in (None, ""):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise NotificationError(f"{where}: expected an integer, got {type(value).__name__}")
    try:
        n = int(value)
    except (ValueError, OverflowError):
        raise NotificationError(f"{where}: expected an integer, got {str(value)[:40]!r}") from None
    if not 0 <= n <= MAX_SIZE:
        raise NotificationError(f"{where}: size {str(n)[:40]} out of range")
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
    if len(bucket) > MAX_NAME_CHARS:
        raise NotificationError(f"{where}.s3.bucket.name: over {MAX_NAME_CHARS} characters")
    obj = _mapping(s3.get("object"), f"{where}.s3.object")
    raw_key = _str(obj.get("key"), f"{where}.s3.object.key")
    key = _key(unquote_plus(raw_key, errors="strict"), f"{where}.s3.object.key")  # form-encoded: '+' is a space
    etag = _opt_str(obj.get("eTag") or obj.get("etag"), f"{where}.s3.object.eTag")
    return ObjectEvent(
        kind=kind, bucket=bucket, key=key, etag=(etag.strip('"') or None) if etag else None,
        size=_opt_int(obj.get("size"), f"{where}.s3.object.size"),
        sequencer=_opt_str(obj.get("sequencer"), f"{where}.s3.object.sequencer"),
        event_time=_time(rec.get("eventTime"), where),
        version_id=_opt_str(obj.get("versionId"), f"{where}.s3.object.versionId"), name=name,
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
        d = _mapping(_loads(d["Message"]), "Message")  # one envelope: SNS does not nest them
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
    if len(bucket) > MAX_NAME_CHARS:
        raise NotificationError(f"key: bucket name over {MAX_NAME_CHARS} characters")
    return bucket, _key(key, "key")


def _entry_size(entry: dict) -> Optional[int]:
    attrs = entry.get("attributes") or {}
    return _opt_int(attrs.get("file_size"), "attributes.file_size") if isinstance(attrs, dict) else None


def _entry_time(entry: dict) -> Optional[datetime]:
    attrs = entry.get("attributes") or {}
    mtime = attrs.get("mtime") if isinstance(attrs, dict) else None
    if isinstance(mtime, bool) or not isinstance(mtime, (int, float)) or not mtime:
        return None
    try:
        return datetime.fromtimestamp(int(mtime), timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise NotificationError(f"attributes.mtime: {str(mtime)[:40]} is not a time") from None


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
            if not isinstance(parent, str):
                raise NotificationError("message.new_parent_path: expected a string")
            new_path = parent.rstrip("/") + "/" + _str(new.get("name"), "message.new_entry.name")
        where = _split_path(new_path, buckets_dir)
        if where:
            out.append(ObjectEvent("created", where[0], where[1], etag=_entry_s3_etag(new), size=_entry_size(new),
                                   event_time=_entry_time(new), name=label))
    return out


# ---- applying events ----------------------------------------------------------------------------------------
