"""``vlwatch connectors check``: can each target database be reached, and does it hold the connector's tables?"""

from __future__ import annotations

from typing import Optional

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DBAPIError, NoSuchModuleError

TABLES = {"inventory": ("inventory_observations", "inventory_stock"), "security": ("security_events",)}


def connect_args(timeout: float = 10.0) -> dict[str, object]:
    """Driver options that bound the time to connect (psycopg and PyMySQL both take ``connect_timeout``)."""
    return {"connect_timeout": max(1, int(round(timeout)))}


def check_target(kind: str, url: str, timeout: float = 5.0) -> Optional[str]:
    """None when the target answers and has its tables; otherwise what is wrong, in words."""
    try:
        engine = create_engine(url, connect_args=connect_args(timeout), pool_pre_ping=False)
    except (NoSuchModuleError, ImportError) as exc:
        return f"no driver for this URL: {exc}"
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            have = set(inspect(conn).get_table_names())
    except DBAPIError as exc:
        return f"cannot connect to {engine.url.render_as_string(hide_password=True)}: {str(exc.orig).strip()}"
    finally:
        engine.dispose()
    missing = [t for t in TABLES[kind] if t not in have]
    if missing:
        return f"reachable, but table(s) {', '.join(missing)} missing: run `vlwatch connectors migrate`"
    return None
