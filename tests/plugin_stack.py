"""pytest plugin: session fixtures over the real servers of tests/stack.py, each isolated per test session
(a fresh PostgreSQL database, MariaDB database, S3 bucket and Redis database number), so two checkouts can run
their suites against one stack at the same time."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Iterator

import pytest

from tests import stack


@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    """Starts what is missing (never skips: a server that cannot start is an error saying how to start it)."""
    try:
        return stack.up()
    except stack.StackError as exc:
        pytest.fail(f"test services unavailable: {exc}\n(start them with: python -m tests.stack up)", pytrace=False)


@pytest.fixture(scope="session")
def session_tag() -> str:
    return f"t{os.getpid()}_{uuid.uuid4().hex[:6]}"


def _fresh_database(server_url: str, name: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    q = '"' if url.get_backend_name() == "postgresql" else "`"
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {q}{name}{q}"))
    yield url.set(database=name).render_as_string(hide_password=False)
    from services.db import dispose_all

    dispose_all()
    with admin.connect() as c:
        if url.get_backend_name() == "postgresql":
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        else:
            c.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_url(stack_env: dict[str, str], session_tag: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    yield from _fresh_database(stack_env["VLWATCH_TEST_PG_URL"], f"vlwatch_{session_tag}")


@pytest.fixture(scope="session")
def mariadb_url(stack_env: dict[str, str], session_tag: str) -> Iterator[str]:
    """A fresh MariaDB database for this test session, dropped at the end."""
    yield from _fresh_database(stack_env["VLWATCH_TEST_MARIADB_URL"], f"vlwatch_{session_tag}")


@pytest.fixture(scope="session")
def redis_url(stack_env: dict[str, str]) -> str:
    """A Redis database number of its own (1-15, chosen per session) on the test server."""
    import redis

    base = stack_env["VLWATCH_TEST_REDIS_URL"].rsplit("/", 1)[0]
    db = 1 + (os.getpid() % 15)
    redis.Redis.from_url(f"{base}/{db}").flushdb()
    return f"{base}/{db}"


@pytest.fixture(scope="session")
def s3_settings(stack_env: dict[str, str], session_tag: str) -> Iterator[S3Settings]:
    """Endpoint and keys of the S3 server, and a fresh bucket for this session; at the end the session's buckets
    (this one and ``<it>-*``) are removed: each is a SeaweedFS collection with volumes of its own, and leftovers
    of many runs would exhaust the server's volume slots."""
    from minio import Minio
    from minio.deleteobjects import DeleteObject

    s = S3Settings(stack_env["VLWATCH_TEST_S3_ENDPOINT"], stack_env["VLWATCH_TEST_S3_ACCESS_KEY"],
                   stack_env["VLWATCH_TEST_S3_SECRET_KEY"], f"vlwatch-{session_tag.replace('_', '-').lower()}")
    client = Minio(s.endpoint, s.access_key, s.secret_key, secure=False)
    client.make_bucket(s.bucket)
    yield s
    for b in client.list_buckets():
        if b.name == s.bucket or b.name.startswith(s.bucket + "-"):
            objs = [DeleteObject(o.object_name) for o in client.list_objects(b.name, recursive=True)]
            for err in client.remove_objects(b.name, objs):
                raise AssertionError(f"could not remove {err.name} from test bucket {b.name}: {err.message}")
            client.remove_bucket(b.name)
