"""``vlwatch connectors check``: can each target database be reached, and does it hold the connector's tables?"""

from __future__ import annotations

from typing import ClassVar, Optional

from sqlalchemy import MetaData, create_engine, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, NoSuchModuleError


def _tables(kind: str) -> MetaData:
    from connectors.inventory import InventoryConnector
    from connectors.security import SecurityConnector

    return {"inventory": InventoryConnector, "security": SecurityConnector}[kind].tables


def connect_args(timeout: float = 10.0) -> dict[str, object]:
    """Driver options that bound the time to connect (psycopg and PyMySQL both take ``connect_timeout``)."""
    return {"connect_timeout": max(1, int(round(timeout)))}


def target_engine(url: str) -> Engine:
    """The engine a connector writes with: a bounded connect, so a target that does not answer is a retry,
    not a hung dispatcher; stale pooled connections are replaced."""
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args())


class TargetDatabase:
    """What a connector with a database of its own shares: an engine made on first use (``target_engine``) and
    ``migrate``, which creates the connector's ``tables`` (idempotent). Subclasses set ``url`` and ``tables``."""

    url: str
    tables: ClassVar[MetaData]
    _engine: Optional[Engine] = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = target_engine(self.url)
        return self._engine

    def migrate(self) -> None:
        """Create the target tables (idempotent)."""
        self.tables.create_all(self.engine)


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
    want = _tables(kind).tables
    missing = [t for t in sorted(want) if t not in have]
    if missing:
        return f"reachable, but table(s) {', '.join(missing)} missing: run `vlwatch connectors migrate`"
    for name, table in sorted(want.items()):
        lacking = [c.name for c in table.columns if c.name not in have[name]]
        if lacking:
            return (f"table {name} lacks column(s) {', '.join(lacking)}: it was made by another version; "
                    f"rename or drop it, then run `vlwatch connectors migrate`")
    return None
