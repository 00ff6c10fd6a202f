"""evaluation runs, several jobs per image, and the views analysts read: current results, SKU sightings, failed jobs

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 18:00:00

An image may now have several jobs (``vlwatch reprocess``); every job keeps its rows. The ``current_*`` views give
what an image's latest succeeded job of each profile found, so queries that read them keep their meaning after a
reprocess. The views are written once for PostgreSQL and SQLite (no dialect functions).
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')

RESULT_COLUMNS = "r.id, r.job_id, r.image_id, r.analyzer, r.x1, r.y1, r.x2, r.y2, r.score, r.created_at"

VIEWS = {
    # The latest succeeded job of every (image, profile): the newest request wins, whenever it finished.
    "current_jobs": """
        SELECT j.* FROM jobs j
        WHERE j.status = 'succeeded'
          AND j.id = (SELECT max(n.id) FROM jobs n
                      WHERE n.image_id = j.image_id AND n.profile = j.profile AND n.status = 'succeeded')""",
    "current_objects": f"""
        SELECT {RESULT_COLUMNS}, r.label, r.phrase, r.attributes
        FROM objects r WHERE r.job_id IN (SELECT id FROM current_jobs)""",
    "current_text_lines": f"""
        SELECT {RESULT_COLUMNS}, r.text
        FROM text_lines r WHERE r.job_id IN (SELECT id FROM current_jobs)""",
    "current_barcodes": f"""
        SELECT {RESULT_COLUMNS}, r.format, r.value
        FROM barcodes r WHERE r.job_id IN (SELECT id FROM current_jobs)""",
    # Every current result of every image, one row each, with where and when: the analyst's first table.
    "current_results": """
        SELECT i.id AS image_id, i.bucket, i.key, s.name AS source, j.id AS job_id, j.profile, j.finished_at,
               i.captured_at, r.kind, r.analyzer, r.label, r.value, r.score, r.x1, r.y1, r.x2, r.y2
        FROM (SELECT job_id, 'objects' AS kind, analyzer, label, phrase AS value, score, x1, y1, x2, y2
                FROM current_objects
              UNION ALL
              SELECT job_id, 'text_lines', analyzer, 'text', text, score, x1, y1, x2, y2 FROM current_text_lines
              UNION ALL
              SELECT job_id, 'barcodes', analyzer, format, value, score, x1, y1, x2, y2 FROM current_barcodes) r
        JOIN current_jobs j ON j.id = r.job_id
        JOIN images i ON i.id = j.image_id
        LEFT JOIN sources s ON s.id = i.source_id""",
    # Codes read in current results: barcode values, and text lines for a SKU pattern to pick from.
    "sku_sightings": """
        SELECT r.value, r.read_by, r.format, i.id AS image_id, i.bucket, i.key, s.name AS source, j.id AS job_id,
               COALESCE(i.captured_at, i.uploaded_at, j.finished_at) AS seen_at, r.x1, r.y1, r.x2, r.y2
        FROM (SELECT job_id, value, 'barcode' AS read_by, format, x1, y1, x2, y2 FROM current_barcodes
              UNION ALL
              SELECT job_id, text, 'ocr', NULL, x1, y1, x2, y2 FROM current_text_lines) r
        JOIN current_jobs j ON j.id = r.job_id
        JOIN images i ON i.id = j.image_id
        LEFT JOIN sources s ON s.id = i.source_id""",
    # Failed jobs with the reason; superseded: a later job of the same image and profile succeeded.
    "failed_jobs": """
        SELECT j.id AS job_id, i.id AS image_id, i.bucket, i.key, s.name AS source, j.profile, j.queue,
               j.attempts, j.error, j.queued_at, j.finished_at,
               CASE WHEN EXISTS (SELECT 1 FROM jobs n WHERE n.image_id = j.image_id AND n.profile = j.profile
                                 AND n.status = 'succeeded' AND n.id > j.id) THEN 1 ELSE 0 END AS superseded
        FROM jobs j JOIN images i ON i.id = j.image_id LEFT JOIN sources s ON s.id = i.source_id
        WHERE j.status = 'failed'""",
}


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobs_image_id_profile_status'), ['image_id', 'profile', 'status'],
                              unique=False)
    op.create_table('eval_runs',
    sa.Column('id', _ID, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('set_name', sa.String(length=255), nullable=False),
    sa.Column('set_path', sa.Text(), nullable=False),
    sa.Column('set_digest', sa.String(length=64), nullable=False),
    sa.Column('images', sa.Integer(), nullable=False),
    sa.Column('profile', sa.String(length=128), nullable=False),
    sa.Column('analyzers', sa.JSON(), nullable=False),
    sa.Column('lineage', sa.JSON(), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('timings', sa.JSON(), nullable=False),
    sa.Column('report_dir', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_eval_runs'))
    )
    op.create_table('eval_images',
    sa.Column('id', _ID, nullable=False),
    sa.Column('run_id', _ID, nullable=False),
    sa.Column('file_name', sa.String(length=1024), nullable=False),
    sa.Column('condition', sa.String(length=16), nullable=False),
    sa.Column('strength', sa.Integer(), nullable=False),
    sa.Column('predictions', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['eval_runs.id'], name=op.f('fk_eval_images_run_id_eval_runs'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_eval_images')),
    sa.UniqueConstraint('run_id', 'file_name', 'condition', 'strength',
                        name=op.f('uq_eval_images_run_id_file_name_condition_strength'))
    )
    with op.batch_alter_table('eval_images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_eval_images_run_id'), ['run_id'], unique=False)
    for name, body in VIEWS.items():  # in order: later views read earlier ones
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW {name}")
    with op.batch_alter_table('eval_images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_eval_images_run_id'))
    op.drop_table('eval_images')
    op.drop_table('eval_runs')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_image_id_profile_status'))
