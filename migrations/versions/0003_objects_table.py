"""objects: the results table of grounded objects takes the name of its result kind (was detections)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 17:00:00
"""
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_INDEXES = ("image_id", "job_id", "label")


def _rename(old: str, new: str) -> None:
    op.rename_table(old, new)
    if op.get_bind().dialect.name == "postgresql":
        for col in _INDEXES:
            op.execute(f'ALTER INDEX ix_{old}_{col} RENAME TO ix_{new}_{col}')
        op.execute(f'ALTER TABLE {new} RENAME CONSTRAINT pk_{old} TO pk_{new}')
        op.execute(f'ALTER TABLE {new} RENAME CONSTRAINT fk_{old}_image_id_images TO fk_{new}_image_id_images')
        op.execute(f'ALTER TABLE {new} RENAME CONSTRAINT fk_{old}_job_id_jobs TO fk_{new}_job_id_jobs')
        op.execute(f'ALTER SEQUENCE {old}_id_seq RENAME TO {new}_id_seq')
    else:  # SQLite keeps index names across a table rename: make them anew under the new name
        for col in _INDEXES:
            op.drop_index(f'ix_{old}_{col}', table_name=new)
            op.create_index(f'ix_{new}_{col}', new, [col], unique=False)


def upgrade() -> None:
    _rename("detections", "objects")


def downgrade() -> None:
    _rename("objects", "detections")
