"""`vlwatch db grant-readonly ROLE`: the role reads every table and view (views made later too) and can change
nothing, on PostgreSQL."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from services.db import get_engine
from tests.ops.test_tokens import vlwatch
from tests.pipeline.conftest import app_env  # noqa: F401 - fixture

pytestmark = pytest.mark.services

TABLES = ("sources", "images", "jobs", "objects", "text_lines", "barcodes", "outbox_events", "webhook_subscriptions",
          "webhook_deliveries", "connectors", "connector_deliveries", "audit_log", "alembic_version")


@pytest.fixture
def role(db_url: str):  # noqa: ANN201
    """A role name of this test's own (roles are global to the server; several checkouts share it)."""
    name = f"analyst_{uuid.uuid4().hex[:8]}"
    yield name
    with get_engine(db_url).begin() as conn:
        conn.execute(text("DROP VIEW IF EXISTS source_names_before, source_names_after"))
        conn.execute(text(f'DROP OWNED BY "{name}"'))
        conn.execute(text(f'DROP ROLE "{name}"'))


def as_role(db_url: str, role: str) -> psycopg.Connection:
    u = make_url(db_url)
    return psycopg.connect(host=u.host, port=u.port, dbname=u.database, user=role, autocommit=True)


def test_the_role_reads_tables_and_views_and_writes_nothing(app_env, db_url, role) -> None:  # noqa: ANN001, F811
    with get_engine(db_url).begin() as conn:
        conn.execute(text("INSERT INTO sources (name, profile, prefix, created_at) VALUES ('s', 'p', 's/', now())"))
        conn.execute(text("CREATE VIEW source_names_before AS SELECT name FROM sources"))
    out = vlwatch({**app_env, "VLWATCH_DATABASE_URL": db_url}, "db", "grant-readonly", role).stdout
    assert "GRANT SELECT ON ALL TABLES" in out
    with get_engine(db_url).begin() as conn:  # a view a later migration makes: default privileges cover it
        conn.execute(text("CREATE VIEW source_names_after AS SELECT name, prefix FROM sources"))
    with as_role(db_url, role) as conn:
        for table in (*TABLES, "source_names_before", "source_names_after"):
            conn.execute(f"SELECT * FROM {table} LIMIT 1").fetchall()
        assert conn.execute("SELECT name FROM source_names_after").fetchall() == [("s",)]
        refused = [
            "INSERT INTO sources (name, profile, prefix, created_at) VALUES ('t', 'p', 't/', now())",
            "UPDATE sources SET prefix = 'x/'", "DELETE FROM sources", "DELETE FROM jobs", "UPDATE images SET size = 0",
            "INSERT INTO audit_log (at, action, actor, criteria, counts) VALUES (now(), 'x', 'y', '{}', '{}')",
            "CREATE TABLE mine (x int)", "SELECT * FROM api_tokens", "TRUNCATE sources",
        ]
        for stmt in refused:
            with pytest.raises(psycopg.Error) as err:
                conn.execute(stmt)
            assert "permission denied" in str(err.value) or "read-only transaction" in str(err.value), stmt
        conn.execute("SET default_transaction_read_only = off")  # the role's own setting is no protection ...
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # ... the grants are
            conn.execute("DELETE FROM sources")
    with get_engine(db_url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sources")).scalar() == 1
