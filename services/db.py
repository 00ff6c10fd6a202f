"""Engines and sessions. One engine per process and URL; SQLite gets WAL and a busy timeout so the embedded
default tolerates a worker and the CLI writing at once."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence

import orjson
from sqlalchemy import Connection, Engine, Select, Table, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker


PG_CONNECT_TIMEOUT_S = 10  # seconds a PostgreSQL connect may take (a URL's own connect_timeout wins)

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def dump_json(value: Any) -> str:
    """The text of a JSON column, for every JSON column the project writes (SQLAlchemy's statements and
    ``write_rows``' COPY alike). orjson: a batch's outbox payloads carry all its result rows, and the standard
    library's encoder was the largest cost of a result commit after the writes themselves (bench/commit.py). Keys
    that are not strings become strings and numpy numbers plain numbers, as with ``json.dumps``; NaN and
    infinities become ``null`` (PostgreSQL's JSON refuses them)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode()


def get_engine(url: str) -> Engine:
    with _lock:
        if url not in _engines:
            _engines[url] = _make_engine(url)
        return _engines[url]


def dispose_all() -> None:
    """Close every pooled connection (before a database is dropped, or at exit)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def _after_fork_in_child() -> None:
    """A forked child (a prefork pool process) opens its own connections: it must not share the parent's pooled
    sockets (threads of the parent, such as the worker's reconciler, keep using them), nor wait on a lock that a
    parent thread held at the moment of the fork."""
    global _lock
    _lock = threading.Lock()
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               json_serializer=dump_json)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # A server that drops packets instead of refusing them would hold a connect for the system's TCP timeout
    # (minutes), and with it a worker's, the reconciler's or the dispatcher's loop: libpq's connect_timeout bounds
    # it, unless the URL sets its own.
    bounded = {} if "connect_timeout" in make_url(url).query else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, json_serializer=dump_json,
                         connect_args=bounded)


def sessionmaker_for(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    with sessionmaker_for(url)() as session, session.begin():
        yield session


def insert_ignore(bind: Connection | Session, table: Table | type, rows: Sequence[dict[str, Any]],
                  keys: Sequence[str], returning: Sequence[Any] = (),
                  from_select: Optional[tuple[Sequence[str], Select]] = None) -> Any:
    """Insert ``rows`` into ``table`` (or, with ``from_select = (columns, select)``, the rows that select makes
    in the database itself), skipping those whose ``keys`` (a unique constraint) already exist: the idempotent
    write of registration and fan-out, in the dialect's own words (PostgreSQL and SQLite both say
    ``ON CONFLICT DO NOTHING``). With ``returning`` columns, the result holds them for the rows inserted."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = bind.get_bind().dialect.name if isinstance(bind, Session) else bind.dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert is None:
        raise ValueError(f"vlwatch's own database must be PostgreSQL or SQLite, not {dialect}")
    stmt = insert(table)
    if from_select is not None:  # its rowcount is the rows inserted
        stmt = stmt.from_select(list(from_select[0]), from_select[1]).execution_options(preserve_rowcount=True)
    stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
    if returning:
        stmt = stmt.returning(*returning)
    return bind.execute(stmt) if from_select is not None else bind.execute(stmt, list(rows))


def write_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` into ``table`` in one trip: ``COPY ... FROM STDIN`` on PostgreSQL (several times the speed of
    an executemany of INSERTs for the thousands of result rows one batch commits), an executemany elsewhere.
    Rows may leave out columns that have a Python-side default; JSON columns are serialised here, since COPY
    bypasses SQLAlchemy's type processing. Runs in the caller's transaction."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(table.insert(), list(rows))
        return
    from sqlalchemy import JSON

    given = set().union(*rows)  # every column any row names
    columns = [c for c in table.columns if c.name in given or (c.default is not None and c.default.is_callable)]
    names = [c.name for c in columns]
    encode = [c.name for c in columns if isinstance(c.type, JSON)]
    filled = {c.name: c.default.arg(None) for c in columns if c.name not in given}  # once for the batch
    quoted = ", ".join(conn.dialect.identifier_preparer.quote(name) for name in names)
    with conn.connection.driver_connection.cursor() as cur, \
            cur.copy(f"COPY {conn.dialect.identifier_preparer.format_table(table)} ({quoted}) FROM STDIN") as copy:
        for row in rows:
            full = filled | row
            for name in encode:
                if full.get(name) is not None:
                    full[name] = dump_json(full[name])
            copy.write_row([full.get(name) for name in names])
