"""answers: vl2-ask's answers to a profile's checks; objects.answer_id links a grounded answer's boxes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 09:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('answers',
    sa.Column('id', _ID, nullable=False),
    sa.Column('job_id', _ID, nullable=False),
    sa.Column('image_id', _ID, nullable=False),
    sa.Column('analyzer', sa.String(length=64), nullable=False),
    sa.Column('check_name', sa.String(length=64), nullable=False),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('raw_text', sa.Text(), nullable=True),
    sa.Column('value_bool', sa.Boolean(), nullable=True),
    sa.Column('value_number', sa.Float(), nullable=True),
    sa.Column('value_text', sa.Text(), nullable=True),
    sa.Column('confidence', sa.Float(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('expected', sa.JSON(), nullable=True),
    sa.Column('passed', sa.Boolean(), nullable=True),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('paired_image_id', _ID, nullable=True),
    sa.Column('lineage', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_answers_image_id_images')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_answers_job_id_jobs')),
    sa.ForeignKeyConstraint(['paired_image_id'], ['images.id'], name=op.f('fk_answers_paired_image_id_images')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_answers'))
    )
    with op.batch_alter_table('answers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_answers_check_name_created_at'), ['check_name', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_answers_image_id'), ['image_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_answers_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_answers_status'), ['status'], unique=False)

    with op.batch_alter_table('objects', schema=None) as batch_op:
        batch_op.add_column(sa.Column('answer_id', _ID, nullable=True))
        batch_op.create_index(batch_op.f('ix_objects_answer_id'), ['answer_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_objects_answer_id_answers'), 'answers', ['answer_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('objects', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_objects_answer_id_answers'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_objects_answer_id'))
        batch_op.drop_column('answer_id')

    with op.batch_alter_table('answers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_answers_status'))
        batch_op.drop_index(batch_op.f('ix_answers_job_id'))
        batch_op.drop_index(batch_op.f('ix_answers_image_id'))
        batch_op.drop_index(batch_op.f('ix_answers_check_name_created_at'))

    op.drop_table('answers')
