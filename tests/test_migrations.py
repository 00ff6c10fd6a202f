"""The Alembic revisions build exactly the schema the models describe, on PostgreSQL and SQLite, and go down again."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from services.migrate import alembic_config, head, upgrade
from services.schema_ddl import metadata


def _diff(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            # Connector tests keep their target tables in the same test database: only vlwatch's own count.
            ours = {"include_name": lambda name, kind, _: kind != "table" or name in metadata.tables}
            return compare_metadata(MigrationContext.configure(conn, opts=ours), metadata)
    finally:
        engine.dispose()


@pytest.mark.services
def test_postgresql_schema_matches_the_models(migrated_pg: str) -> None:
    assert _diff(migrated_pg) == []


def test_sqlite_upgrade_downgrade_upgrade(tmp_path) -> None:  # noqa: ANN001
    from alembic import command

    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    assert _diff(url) == [] and head() == "0007"
    command.downgrade(alembic_config(url), "0006")
    engine = create_engine(url)
    indexes = {i["name"] for i in inspect(engine).get_indexes("webhook_deliveries")}
    engine.dispose()
    assert indexes == {"ix_webhook_deliveries_status_next_attempt_at"}
    engine = create_engine(url)
    assert "current_barcodes" in inspect(engine).get_view_names()
    engine.dispose()
    command.downgrade(alembic_config(url), "0005")
    engine = create_engine(url)
    assert inspect(engine).get_view_names() == [] and "eval_runs" not in inspect(engine).get_table_names()
    engine.dispose()
    command.downgrade(alembic_config(url), "0004")
    engine = create_engine(url)
    assert not {"api_tokens", "audit_log"} & set(inspect(engine).get_table_names())
    engine.dispose()
    command.downgrade(alembic_config(url), "0003")
    engine = create_engine(url)
    tables, columns = set(inspect(engine).get_table_names()), {c["name"] for c in inspect(engine).get_columns("objects")}
    engine.dispose()
    assert "answers" not in tables and "answer_id" not in columns
    command.downgrade(alembic_config(url), "0002")
    engine = create_engine(url)
    indexes = {i["name"] for i in inspect(engine).get_indexes("detections")}
    engine.dispose()
    assert indexes == {"ix_detections_image_id", "ix_detections_job_id", "ix_detections_label"}
    command.downgrade(alembic_config(url), "0001")
    engine = create_engine(url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert "connector_deliveries" not in tables and "outbox_events" in tables
    upgrade(url)
    assert _diff(url) == []
