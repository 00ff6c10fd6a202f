"""The models' metadata as schema DDL sees it: services.schema's tables plus the indexes that carry options of a
database dialect (partial indexes, a GIN trigram index), which this module adds to those tables when imported.

They are declared here, not in the models, because SQLAlchemy checks a dialect option by importing that dialect's
whole package: ``postgresql_where`` imports every PostgreSQL driver module and asyncio, about 0.03 s of CPU that
every command reading SQL would pay on the embedded SQLite default (issue 12: quick commands in 0.4 s). Queries
never need index declarations; comparing or generating schema does. So whatever compares the models to the
database imports :data:`metadata` from here: ``migrations/env.py`` and ``tests/test_migrations.py``. The revisions
under migrations/ create these indexes (0005, 0007).
"""

from __future__ import annotations

from sqlalchemy import Index, text

from services.schema import Base, ConnectorDelivery, OutboxEvent, TextLineRow, WebhookDelivery

PENDING = text("status = 'pending'")
UNDISPATCHED = text("dispatched_at IS NULL")

# Search by text (ILIKE '%...%'): a trigram index on PostgreSQL (extension pg_trgm); a plain one on SQLite.
Index("ix_text_lines_text_trgm", TextLineRow.text, postgresql_using="gin", postgresql_ops={"text": "gin_trgm_ops"})
# Fan-out's next events, whatever the backlog of dispatched ones before them; only these are indexed, so marking
# an event dispatched takes it out of the index instead of adding to it.
Index("ix_outbox_events_undispatched", OutboxEvent.id, postgresql_where=UNDISPATCHED, sqlite_where=UNDISPATCHED)
# One target's due deliveries are an index range of their own, whatever other targets have waiting; delivered and
# dead ones leave the index.
Index("ix_webhook_deliveries_due", WebhookDelivery.subscription_id, WebhookDelivery.next_attempt_at,
      WebhookDelivery.id, postgresql_where=PENDING, sqlite_where=PENDING)
Index("ix_connector_deliveries_due", ConnectorDelivery.connector_id, ConnectorDelivery.next_attempt_at,
      ConnectorDelivery.id, postgresql_where=PENDING, sqlite_where=PENDING)

metadata = Base.metadata  # every table with every index
