"""``vlwatch connectors check``: can each target database be reached, and does it hold the connector's tables?"""

from __future__ import annotations

from typing import Optional

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DBAPIError, NoSuchModuleError

from connectors.inventory import InventoryConnector
from connectors.security import SecurityConnector
from connectors.targets import connect_args

TABLES = {"inventory": InventoryConnector.tables, "security": SecurityConnector.tables}
"""Each connector kind's target tables."""


def check_target(kind: str, url: str, timeout: float = 5.0) -> Optional[str]:
    """None when the target answers and has its tables; otherwise what is wrong, in words."""
    try:
        engine = create_engine(url, connect_args=connect_args(timeout), pool_pre_ping=False)
    except (NoSuchModuleError, ImportError) as exc:
        return f"no driver for this URL: {exc}"
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            insp = inspect(conn)
            have = {t: {c["name"] for c in insp.get_columns(t)} for t in insp.get_table_names()}
    except DBAPIError as exc:
        return f"cannot connect to {engine.url.render_as_string(hide_password=True)}: {str(exc.orig).strip()}"
    finally:
        engine.dispose()
    want = TABLES[kind].tables
    missing = [t for t in sorted(want) if t not in have]
    if missing:
        return f"reachable, but table(s) {', '.join(missing)} missing: run `vlwatch connectors migrate`"
    for name, table in sorted(want.items()):
        lacking = [c.name for c in table.columns if c.name not in have[name]]
        if lacking:
            return (f"table {name} lacks column(s) {', '.join(lacking)}: it was made by another version; "
                    f"rename or drop it, then run `vlwatch connectors migrate`")
    return None
