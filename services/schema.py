"""The SQL schema: the product's query surface. Documented table by table in docs/sql.md.

SQLAlchemy 2.0 typed models with a constraint naming convention. Alembic revisions under migrations/ are the
only way the schema changes; `vlwatch db upgrade` applies them on PostgreSQL and SQLite.
Every timestamp is timezone-aware UTC.

Why this module is long: it is the whole query surface in one place, in the order docs/sql.md documents it, so a
reader can hold the tables, their keys and their relations side by side.
"""

# No ``from __future__ import annotations``: SQLAlchemy would then evaluate each ``Mapped[...]`` annotation from
# its text when the models load, about 0.01 s of every command's start (bench/cli_start.py).

import enum
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (
    JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text,
    TypeDecorator, UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC on every backend: SQLite stores naive values, so they are re-tagged on the way out."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[datetime], dialect: Any) -> Optional[datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; vlwatch stores timezone-aware UTC only")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Optional[datetime], dialect: Any) -> Optional[datetime]:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class JobStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class DeliveryStatus(str, enum.Enum):
    pending = "pending"  # waiting for its next attempt (next_attempt_at)
    delivered = "delivered"
    dead = "dead"  # retry schedule exhausted; `vlwatch webhooks replay` re-sends


# Id columns are BIGINT on servers and INTEGER on SQLite (its rowid alias needs exactly INTEGER).
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Source(Base):
    __tablename__ = "sources"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    profile: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(1024), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("bucket", "key", "etag"),
        Index(None, "source_id", "uploaded_at"),
        Index(None, "source_id", "id"),  # search: one source's images, newest first
        Index(None, "captured_at"),  # search by time: capture time, else upload time
        Index(None, "uploaded_at"),
        Index(None, "sha256"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source_id: Mapped[Optional[int]] = mapped_column(ForeignKey("sources.id"))
    bucket: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(1024))
    etag: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[Optional[str]] = mapped_column(String(128))
    sha256: Mapped[Optional[str]] = mapped_column(String(64))  # filled when a worker reads the bytes
    width: Mapped[Optional[int]] = mapped_column(Integer)  # upright (after EXIF orientation)
    height: Mapped[Optional[int]] = mapped_column(Integer)
    captured_at: Mapped[Optional[datetime]] = mapped_column()  # EXIF DateTimeOriginal where present
    uploaded_at: Mapped[Optional[datetime]] = mapped_column()  # the object's last-modified time in the store
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """One analysis of one image. An image has one job from registration and one more per ``vlwatch reprocess``;
    each keeps its own result rows. The views ``current_*`` pick the latest succeeded job per image and profile."""

    __tablename__ = "jobs"
    __table_args__ = (Index(None, "status", "lease_expires_at"), Index(None, "finished_at"),
                      Index(None, "image_id", "profile", "status"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    profile: Mapped[str] = mapped_column(String(128))
    queue: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[Optional[str]] = mapped_column(String(255))
    lease_expires_at: Mapped[Optional[datetime]] = mapped_column()
    error: Mapped[Optional[str]] = mapped_column(Text)  # reason a person can act on, for failed jobs
    queued_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[Optional[datetime]] = mapped_column()  # last time the Celery task was sent
    started_at: Mapped[Optional[datetime]] = mapped_column()
    finished_at: Mapped[Optional[datetime]] = mapped_column()
    timings: Mapped[Optional[dict[str, Any]]] = mapped_column()  # stage -> seconds
    lineage: Mapped[Optional[list[Any]]] = mapped_column()  # one entry per analyzer run


class _ResultMixin:
    """Columns shared by the three result tables (one per ``Detections`` kind, named as the kind): the job, the
    image, the analyzer and the pixel box."""

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    analyzer: Mapped[str] = mapped_column(String(64))
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    x2: Mapped[float] = mapped_column(Float)
    y2: Mapped[float] = mapped_column(Float)
    score: Mapped[Optional[float]] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ObjectRow(_ResultMixin, Base):
    __tablename__ = "objects"
    # search: by label, and by confidence alone (the score index answers "some row scores at least t")
    __table_args__ = (Index(None, "label"), Index(None, "label", "image_id"), Index(None, "score", "image_id"))
    label: Mapped[str] = mapped_column(String(255))
    phrase: Mapped[Optional[str]] = mapped_column(String(1024))  # the grounding prompt phrase
    attributes: Mapped[Optional[dict[str, Any]]] = mapped_column()
    # set on the boxes of a grounded answer (a check with ``grounded: true``): the answer whose prose carried them
    answer_id: Mapped[Optional[int]] = mapped_column(ForeignKey("answers.id"), index=True)


class TextLineRow(_ResultMixin, Base):
    __tablename__ = "text_lines"
    # Search by text (ILIKE '%...%') uses a trigram index on PostgreSQL (services/schema_ddl.py).
    __table_args__ = (Index(None, "score", "image_id"),)
    text: Mapped[str] = mapped_column(Text)


class BarcodeRow(_ResultMixin, Base):
    __tablename__ = "barcodes"
    __table_args__ = (Index(None, "value"),)
    format: Mapped[str] = mapped_column(String(32))
    value: Mapped[str] = mapped_column(Text().with_variant(String(2048), "mysql"))


class AnswerRow(Base):
    """One answer of ``vl2-ask`` to one check about one image. The value sits in the column of its kind's type:
    ``value_bool`` (yes_no), ``value_number`` (number), ``value_text`` (choice, text); all null unless
    ``status`` is ``ok``. ``passed`` is null without an expectation or without a parsed value."""

    __tablename__ = "answers"
    __table_args__ = (Index(None, "check_name", "created_at"), Index(None, "status"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    analyzer: Mapped[str] = mapped_column(String(64))
    check_name: Mapped[str] = mapped_column(String(64))  # the check's name in the profile
    question: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))  # yes_no, number, choice, text
    status: Mapped[str] = mapped_column(String(16))  # ok, unparsed, no_previous
    raw_text: Mapped[Optional[str]] = mapped_column(Text)  # the model's answer as decoded
    value_bool: Mapped[Optional[bool]] = mapped_column(Boolean)
    value_number: Mapped[Optional[float]] = mapped_column(Float)
    value_text: Mapped[Optional[str]] = mapped_column(Text)
    confidence: Mapped[Optional[float]] = mapped_column(Float)  # mean probability of the answer's tokens
    reason: Mapped[Optional[str]] = mapped_column(Text)  # why an answer did not parse
    expected: Mapped[Optional[dict[str, Any]]] = mapped_column()  # {"equals": v} or {"min": a, "max": b}
    passed: Mapped[Optional[bool]] = mapped_column(Boolean)
    severity: Mapped[str] = mapped_column(String(16))
    paired_image_id: Mapped[Optional[int]] = mapped_column(ForeignKey("images.id"))  # the previous image shown
    lineage: Mapped[Optional[dict[str, Any]]] = mapped_column()  # model, checkpoint digest, prompt, settings
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxEvent(Base):
    """Events committed with the results that cause them; the dispatcher fans them out to deliveries."""

    __tablename__ = "outbox_events"
    # fan-out reads its next events through a partial index of the undispatched ones (services/schema_ddl.py)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)  # the webhook-id: msg_<uuid hex>
    type: Mapped[str] = mapped_column(String(64))  # job.succeeded, job.failed
    job_id: Mapped[Optional[int]] = mapped_column(ForeignKey("jobs.id"), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[Optional[datetime]] = mapped_column()  # deliveries created for every subscription


class WebhookSubscription(Base):
    __tablename__ = "webhook_subscriptions"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    url: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(255))  # whsec_<base64>
    event_types: Mapped[list[Any]] = mapped_column()  # e.g. ["job.succeeded", "job.failed"]; ["*"] for all
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    # one subscription's due deliveries are a range of a partial index (services/schema_ddl.py)
    __table_args__ = (UniqueConstraint("event_id", "subscription_id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("outbox_events.id"))
    subscription_id: Mapped[int] = mapped_column(ForeignKey("webhook_subscriptions.id"))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.pending.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[Optional[datetime]] = mapped_column()
    last_attempt_at: Mapped[Optional[datetime]] = mapped_column()
    last_status_code: Mapped[Optional[int]] = mapped_column(Integer)
    last_error: Mapped[Optional[str]] = mapped_column(Text)
    delivered_at: Mapped[Optional[datetime]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConnectorTarget(Base):
    """A connector named in the YAML file (inventory or security database); synced at dispatcher start so that
    fan-out creates its deliveries even when another process fans out."""

    __tablename__ = "connectors"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # inventory | security
    event_types: Mapped[list[Any]] = mapped_column()  # ["job.succeeded"]
    active: Mapped[bool] = mapped_column(Boolean, default=True)  # false: no longer in the YAML file
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConnectorDelivery(Base):
    """One outbox event for one connector: the same pending -> delivered | dead life as a webhook delivery."""

    __tablename__ = "connector_deliveries"
    # one connector's due deliveries are a range of a partial index (services/schema_ddl.py)
    __table_args__ = (UniqueConstraint("event_id", "connector_id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("outbox_events.id"))
    connector_id: Mapped[int] = mapped_column(ForeignKey("connectors.id"))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.pending.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[Optional[datetime]] = mapped_column()
    last_attempt_at: Mapped[Optional[datetime]] = mapped_column()
    last_error: Mapped[Optional[str]] = mapped_column(Text)  # the target database's message
    delivered_at: Mapped[Optional[datetime]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A bearer token of the HTTP API, the results page and the bucket-notification listener. Only the SHA-256 of
    the token is stored (tokens are 256 random bits, so a plain hash cannot be reversed by guessing)."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(16))  # the token's first characters, to tell tokens apart
    sources: Mapped[Optional[list[Any]]] = mapped_column()  # source names it may see; null: every source
    can_upload: Mapped[bool] = mapped_column(Boolean, default=False)  # presigned uploads, bucket notifications
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[Optional[datetime]] = mapped_column()


class AuditEntry(Base):
    """What an operator did that cannot be undone (purge, forget) or that grants access (tokens), and its counts."""

    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "at"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    action: Mapped[str] = mapped_column(String(32))  # purge, forget, token.add, token.revoke, grant-readonly
    actor: Mapped[str] = mapped_column(String(255))  # the OS user that ran the command
    source: Mapped[Optional[str]] = mapped_column(String(128))
    criteria: Mapped[dict[str, Any]] = mapped_column()  # what was asked: key, before, retain_days, token name...
    counts: Mapped[dict[str, Any]] = mapped_column()  # rows, objects, deliveries (by status) removed


class EvalRun(Base):
    """One ``vlwatch eval`` run over a labelled set: what ran (lineage, settings) and its scores, so runs compare.
    ``metrics`` holds the scores (identical for two runs with the same set, analyzers and settings); ``timings``
    the latencies, which vary and are kept apart."""

    __tablename__ = "eval_runs"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    set_name: Mapped[str] = mapped_column(String(255))
    set_path: Mapped[str] = mapped_column(Text)
    set_digest: Mapped[str] = mapped_column(String(64))  # sha256 of the truth file and every image
    images: Mapped[int] = mapped_column(Integer)
    profile: Mapped[str] = mapped_column(String(128))
    analyzers: Mapped[list[Any]] = mapped_column()  # names, in profile order
    lineage: Mapped[list[Any]] = mapped_column()  # per analyzer: engine, version, model_id, checkpoint_digest...
    settings: Mapped[dict[str, Any]] = mapped_column()  # degradations, strengths, seed
    metrics: Mapped[dict[str, Any]] = mapped_column()  # {"clean": {...}, "degraded": {name: {strength: {...}}}}
    timings: Mapped[dict[str, Any]] = mapped_column()  # clean pass: images/s, per analyzer p50/p95
    report_dir: Mapped[Optional[str]] = mapped_column(Text)


class EvalImage(Base):
    """What one evaluation run predicted for one image under one condition (``clean`` or a degradation at a
    strength): the rows in the shape of the result tables, for ``vlwatch diff``."""

    __tablename__ = "eval_images"
    __table_args__ = (UniqueConstraint("run_id", "file_name", "condition", "strength"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"), index=True)
    file_name: Mapped[str] = mapped_column(String(1024))
    condition: Mapped[str] = mapped_column(String(16))  # clean, blur, dark, noise, jpeg, tilt
    strength: Mapped[int] = mapped_column(Integer)  # 0 for clean, else 1..3
    predictions: Mapped[dict[str, Any]] = mapped_column()  # kind -> rows; "answers" -> {check: {value, status}}
    error: Mapped[Optional[str]] = mapped_column(Text)


RESULT_TABLES = {"objects": ObjectRow, "text_lines": TextLineRow, "barcodes": BarcodeRow}
"""``Detections.kind`` -> its table (the table has the kind's name)."""
