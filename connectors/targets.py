"""What a database connector is: a target database of its own, written with idempotent upserts, and the sorting
of a batch's outcome into delivered, retry and dead.

A connector ``apply``s a batch of ``(event_id, payload)`` pairs in one transaction of its target database.
:func:`deliver_batch` runs a batch and sorts the outcome per event: ``delivered``; ``retry`` when the target
cannot be reached (``OperationalError``/``InterfaceError``: down, refused, timed out — nothing is lost, the
events stay due); ``dead`` with the database's message when the target rejects the event's rows
(``IntegrityError``/``DataError``/other ``DBAPIError``: constraint, type, value too long). A rejected batch is
retried one event at a time so one bad event does not hold back the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Optional, Protocol, Sequence

from sqlalchemy import MetaData, Table, case, create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from connectors.outbound import OutboundGuard


class Connector(Protocol):
    name: str

    def migrate(self) -> None: ...

    def apply(self, events: Sequence[tuple[str, dict[str, Any]]]) -> Any: ...


def connect_args(timeout: float = 10.0) -> dict[str, object]:
    """Driver options that bound the time to connect (psycopg and PyMySQL both take ``connect_timeout``)."""
    return {"connect_timeout": max(1, int(round(timeout)))}


DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}


def target_refusal(url: str, guard: OutboundGuard) -> Optional[str]:
    """Why the outbound guard refuses a target database's host (None: it does not, or the name does not resolve
    now). Drivers connect by themselves, so targets are judged when configured and checked, not per connection."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if not u.host:
        return None
    host = f"[{u.host}]" if ":" in u.host else u.host
    return guard.check_url(f"tcp://{host}", u.port or DEFAULT_PORTS.get(u.get_backend_name(), 5432))


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


def event_time(payload: dict[str, Any]) -> datetime:
    """When the scene was seen: the image's capture time (EXIF) where known, else when it reached the bucket,
    else when the event was made."""
    image = (payload.get("data") or {}).get("image") or {}
    for key in ("captured_at", "uploaded_at"):
        if image.get(key):
            return _parse_time(image[key])
    return _parse_time(payload["timestamp"])


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00"))


@dataclass
class BatchOutcome:
    delivered: list[str] = field(default_factory=list)
    retry: dict[str, str] = field(default_factory=dict)  # event id -> why
    dead: dict[str, str] = field(default_factory=dict)  # event id -> the database's message


def deliver_batch(connector: Connector, events: Sequence[tuple[str, dict[str, Any]]]) -> BatchOutcome:
    out = BatchOutcome()
    try:
        connector.apply(events)
        out.delivered = [eid for eid, _ in events]
        return out
    except DBAPIError as e:
        if _unreachable(e):
            out.retry = {eid: str(e.orig) for eid, _ in events}
            return out
    for eid, payload in events:
        try:
            connector.apply([(eid, payload)])
            out.delivered.append(eid)
        except DBAPIError as e:
            (out.retry if _unreachable(e) else out.dead)[eid] = str(e.orig)
    return out


def _unreachable(e: DBAPIError) -> bool:
    """Connection-level failure (retry) rather than a rejection of the rows (dead-letter)."""
    if not isinstance(e, (OperationalError, InterfaceError)):
        return False
    # MySQL/MariaDB: server error codes 1000-1999 (e.g. 1406 "Data too long") are rejections even when the
    # driver raises them as OperationalError; client codes 2000+ (2003 refused, 2006/2013 gone) are not.
    args = getattr(e.orig, "args", ())
    code = args[0] if args else None
    return not (isinstance(code, int) and 1000 <= code < 2000)


def upsert(conn: Connection, table: Table, rows: list[dict], batched: bool, newer: Optional[str]) -> None:
    """Dialect upsert. With ``newer`` the existing row is replaced only when that column grows."""
    if not rows:
        return
    keys = {c.name for c in table.primary_key.columns}
    cols = [c.name for c in table.columns if c.name not in keys]
    dialect = conn.dialect.name
    chunks = [rows] if batched else [[r] for r in rows]
    for chunk in chunks:
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
            stmt = insert(table).values(chunk)
            ex = stmt.excluded
            where = table.c[newer] < ex[newer] if newer is not None else None
            stmt = stmt.on_conflict_do_update(index_elements=sorted(keys), set_={c: ex[c] for c in cols},
                                              where=where)
        elif dialect in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert
            stmt = insert(table).values(chunk)
            ins = stmt.inserted
            if newer is None:
                sets = {c: ins[c] for c in cols}
            else:
                # MySQL applies assignments left to right: the compared column goes last so every test sees
                # its old value.
                cond = table.c[newer] < ins[newer]
                order = [c for c in cols if c != newer] + [newer]
                sets = {c: case((cond, ins[c]), else_=table.c[c]) for c in order}
            stmt = stmt.on_duplicate_key_update(list(sets.items()))
        else:
            raise ValueError(f"unsupported target dialect {dialect!r}")
        conn.execute(stmt)
