"""delivery indexes: fan-out reads only undispatched events, and each target's due deliveries are an index range
of their own (a target with a long backlog does not slow the claims of the others); the partial indexes replace
the indexes on every row's dispatched_at and (status, next_attempt_at), so finished rows leave them

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 18:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

PENDING = sa.text("status = 'pending'")
UNDISPATCHED = sa.text("dispatched_at IS NULL")
DUE = {"webhook_deliveries": "subscription_id", "connector_deliveries": "connector_id"}


def upgrade() -> None:
    op.drop_index('ix_outbox_events_dispatched_at', table_name='outbox_events')
    op.create_index('ix_outbox_events_undispatched', 'outbox_events', ['id'], unique=False,
                    postgresql_where=UNDISPATCHED, sqlite_where=UNDISPATCHED)
    for table, target in DUE.items():
        op.drop_index(f'ix_{table}_status_next_attempt_at', table_name=table)
        op.create_index(f'ix_{table}_due', table, [target, 'next_attempt_at', 'id'], unique=False,
                        postgresql_where=PENDING, sqlite_where=PENDING)


def downgrade() -> None:
    for table in DUE:
        op.drop_index(f'ix_{table}_due', table_name=table)
        op.create_index(f'ix_{table}_status_next_attempt_at', table, ['status', 'next_attempt_at'], unique=False)
    op.drop_index('ix_outbox_events_undispatched', table_name='outbox_events')
    op.create_index('ix_outbox_events_dispatched_at', 'outbox_events', ['dispatched_at'], unique=False)
