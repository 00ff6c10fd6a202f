"""operations: API tokens, the audit log, and the indexes of image search (bench/search.py)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 09:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('api_tokens',
    sa.Column('id', _ID, nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('hint', sa.String(length=16), nullable=False),
    sa.Column('sources', sa.JSON(), nullable=True),
    sa.Column('can_upload', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('name', name=op.f('uq_api_tokens_name')),
    sa.UniqueConstraint('token_sha256', name=op.f('uq_api_tokens_token_sha256'))
    )
    op.create_table('audit_log',
    sa.Column('id', _ID, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('actor', sa.String(length=255), nullable=False),
    sa.Column('source', sa.String(length=128), nullable=True),
    sa.Column('criteria', sa.JSON(), nullable=False),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    op.create_index(op.f('ix_audit_log_at'), 'audit_log', ['at'], unique=False)
    op.create_index(op.f('ix_objects_label_image_id'), 'objects', ['label', 'image_id'], unique=False)
    op.create_index(op.f('ix_images_source_id_id'), 'images', ['source_id', 'id'], unique=False)
    op.create_index(op.f('ix_images_captured_at'), 'images', ['captured_at'], unique=False)
    op.create_index(op.f('ix_images_uploaded_at'), 'images', ['uploaded_at'], unique=False)
    op.create_index(op.f('ix_objects_score_image_id'), 'objects', ['score', 'image_id'], unique=False)
    op.create_index(op.f('ix_text_lines_score_image_id'), 'text_lines', ['score', 'image_id'], unique=False)
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('CREATE EXTENSION IF NOT EXISTS pg_trgm')
    op.create_index('ix_text_lines_text_trgm', 'text_lines', ['text'], unique=False, postgresql_using='gin',
                    postgresql_ops={'text': 'gin_trgm_ops'})


def downgrade() -> None:
    op.drop_index('ix_text_lines_text_trgm', table_name='text_lines')
    op.drop_index(op.f('ix_text_lines_score_image_id'), table_name='text_lines')
    op.drop_index(op.f('ix_objects_score_image_id'), table_name='objects')
    op.drop_index(op.f('ix_images_uploaded_at'), table_name='images')
    op.drop_index(op.f('ix_images_captured_at'), table_name='images')
    op.drop_index(op.f('ix_images_source_id_id'), table_name='images')
    op.drop_index(op.f('ix_objects_label_image_id'), table_name='objects')
    op.drop_index(op.f('ix_audit_log_at'), table_name='audit_log')
    op.drop_table('audit_log')
    op.drop_table('api_tokens')
