"""Shared fixtures. Real services only: tests/plugin_stack.py starts (or reaches) PostgreSQL, Redis, SeaweedFS
and MariaDB; a missing service is an error with the command that starts it, never a skip."""

from __future__ import annotations

import pytest
from sqlalchemy import text

pytest_plugins = ["tests.plugin_stack"]


@pytest.fixture(scope="session")
def migrated_pg(pg_url: str) -> str:
    """The session's PostgreSQL database, migrated to the newest revision by Alembic."""
    from services.migrate import upgrade

    upgrade(pg_url)
    return pg_url


@pytest.fixture
def db_url(migrated_pg: str) -> str:
    """A migrated PostgreSQL database with every table emptied before the test."""
    from services.db import get_engine
    from services.schema import Base

    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with get_engine(migrated_pg).begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    return migrated_pg


@pytest.fixture
def sqlite_url(tmp_path) -> str:  # noqa: ANN001
    """A migrated SQLite file, the embedded default."""
    from services.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'vlwatch.db'}"
    upgrade(url)
    return url
