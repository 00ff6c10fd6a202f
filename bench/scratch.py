"""What the service benchmarks share: the test stack's servers (started if missing), and a scratch PostgreSQL
database (migrated) with an S3 bucket of its own, both removed afterwards — every bucket is a SeaweedFS
collection with volumes of its own, and leftovers of some dozens of runs exhaust the test server's volumes."""

from __future__ import annotations

import subprocess
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]


def stack_env() -> dict[str, str]:
    """The ``VLWATCH_TEST_*`` variables of the test stack (tests/stack.py), which is started if it is not running."""
    subprocess.run([sys.executable, "-m", "tests.stack", "up"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([sys.executable, "-m", "tests.stack", "env"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    env = {}
    for line in out.splitlines():
        line = line.removeprefix("export ").strip()
        if "=" in line:
            k, v = line.split("=", 1)
            env[k] = v.strip("'\"")
    return env


@dataclass(frozen=True)
class Scratch:
    stack: dict[str, str]  # stack_env()
    db_url: str  # a fresh database, migrated to the newest revision
    bucket: str  # a fresh bucket on the stack's S3 server


@contextmanager
def scratch() -> Iterator[Scratch]:
    from minio import Minio
    from minio.deleteobjects import DeleteObject
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from services.db import dispose_all
    from services.migrate import upgrade

    st = stack_env()
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = make_url(st["VLWATCH_TEST_PG_URL"])
    with create_engine(admin, isolation_level="AUTOCOMMIT").connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    s3 = Minio(st["VLWATCH_TEST_S3_ENDPOINT"], st["VLWATCH_TEST_S3_ACCESS_KEY"], st["VLWATCH_TEST_S3_SECRET_KEY"],
               secure=False)
    bucket = name.replace("_", "-")
    s3.make_bucket(bucket)
    try:
        db_url = admin.set(database=name).render_as_string(hide_password=False)
        upgrade(db_url)
        yield Scratch(st, db_url, bucket)
    finally:
        objects = [DeleteObject(o.object_name) for o in s3.list_objects(bucket, recursive=True)]
        for err in s3.remove_objects(bucket, objects):
            print(f"could not delete {err.name} from bucket {bucket}: {err.message}", file=sys.stderr)
        s3.remove_bucket(bucket)
        dispose_all()
        with create_engine(admin, isolation_level="AUTOCOMMIT").connect() as c:
            c.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
