"""The SQL schema: the product's query surface. Documented table by table in docs/sql.md.

SQLAlchemy 2.0 typed models with a constraint naming convention. Alembic revisions under migrations/ are the
only way the schema changes; `vlwatch db upgrade` applies them on PostgreSQL and SQLite.
Every timestamp is timezone-aware UTC.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (
    JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text,
    TypeDecorator, UniqueConstraint, text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

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

    source: Mapped[Optional[Source]] = relationship()


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index(None, "status", "lease_expires_at"), Index(None, "finished_at"))
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

    image: Mapped[Image] = relationship()


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
    __table_args__ = (Index(None, "label"),)
    label: Mapped[str] = mapped_column(String(255))
    phrase: Mapped[Optional[str]] = mapped_column(String(1024))  # the grounding prompt phrase
    attributes: Mapped[Optional[dict[str, Any]]] = mapped_column()


class TextLineRow(_ResultMixin, Base):
    __tablename__ = "text_lines"
    text: Mapped[str] = mapped_column(Text)


class BarcodeRow(_ResultMixin, Base):
    __tablename__ = "barcodes"
    __table_args__ = (Index(None, "value"),)
    format: Mapped[str] = mapped_column(String(32))
    value: Mapped[str] = mapped_column(Text().with_variant(String(2048), "mysql"))


class OutboxEvent(Base):
    """Events committed with the results that cause them; the dispatcher fans them out to deliveries."""

    __tablename__ = "outbox_events"
    # fan-out's next events, whatever the backlog of dispatched ones before them; only these are indexed, so
    # marking an event dispatched takes it out of the index instead of adding to it
    __table_args__ = (Index("ix_outbox_events_undispatched", "id", postgresql_where=text("dispatched_at IS NULL"),
                            sqlite_where=text("dispatched_at IS NULL")),)
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
    # one subscription's due deliveries are an index range of their own, whatever other subscriptions have
    # waiting; delivered and dead ones leave the index
    __table_args__ = (UniqueConstraint("event_id", "subscription_id"),
                      Index("ix_webhook_deliveries_due", "subscription_id", "next_attempt_at", "id",
                            postgresql_where=text("status = 'pending'"), sqlite_where=text("status = 'pending'")))
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

    event: Mapped[OutboxEvent] = relationship()
    subscription: Mapped[WebhookSubscription] = relationship()


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
    __table_args__ = (UniqueConstraint("event_id", "connector_id"),
                      Index("ix_connector_deliveries_due", "connector_id", "next_attempt_at", "id",
                            postgresql_where=text("status = 'pending'"), sqlite_where=text("status = 'pending'")))
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

    event: Mapped[OutboxEvent] = relationship()
    connector: Mapped[ConnectorTarget] = relationship()


RESULT_TABLES = {"objects": ObjectRow, "text_lines": TextLineRow, "barcodes": BarcodeRow}
"""``Detections.kind`` -> its table (the table has the kind's name)."""
