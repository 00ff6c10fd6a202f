"""Fixtures for notification ingestion: a bucket of its own on the session's SeaweedFS, the real Celery sender
over the session's Redis, and the HTTP receiver on a free loopback port."""

from __future__ import annotations

import threading
from typing import Callable, Iterator

import pytest
from sqlalchemy import select

from services.config import AppConfig, parse_config
from services.db import session_scope
from services.ingest.http_guard import Limits
from services.ingest.listener import NotifyServer
from services.schema import Image, Job
from services.storage import S3Store
from tests.ingest.events import QUEUE

CONFIG_YAML = f"""
profiles:
  labels: {{analyzers: [barcode, ocr], queue: {QUEUE}}}
  codes: {{analyzers: [barcode], queue: {QUEUE}}}
sources:
  shelf: {{prefix: "shelf/", profile: labels}}
  dock: {{prefix: "dock/", profile: codes}}
  yard: {{prefix: "yard/", profile: codes}}
"""


@pytest.fixture(scope="session")
def notify_config() -> AppConfig:
    return parse_config(CONFIG_YAML)


@pytest.fixture
def store(s3_settings) -> S3Store:  # noqa: ANN001
    """A bucket of this module's own (``<session bucket>-notify``), emptied before each test."""
    st = S3Store(s3_settings.endpoint, s3_settings.access_key, s3_settings.secret_key,
                 f"{s3_settings.bucket}-notify")
    st.ensure_bucket()
    for o in list(st.list()):
        st.delete(o.key)
    return st


@pytest.fixture(scope="session")
def notify_celery(redis_url: str):  # noqa: ANN201
    from services.settings import Settings
    from workers.app import make_app

    return make_app(Settings(broker_url=redis_url))


@pytest.fixture
def sender(notify_celery, redis_url: str):  # noqa: ANN001, ANN201
    """The real ``send_job`` (Celery over Redis); the test's messages are removed from the queue after it."""
    import redis

    from workers.app import sender_for

    yield sender_for(notify_celery)
    redis.Redis.from_url(redis_url).delete(QUEUE)


@pytest.fixture
def jobs(db_url: str) -> Callable[[], list[tuple[str, str, str, bool]]]:
    """Registered jobs as (key, etag, queue, sent) sorted by key."""

    def read() -> list[tuple[str, str, str, bool]]:
        with session_scope(db_url) as s:
            rows = s.execute(select(Image.key, Image.etag, Job.queue, Job.sent_at).join(Job, Job.image_id == Image.id)
                             .order_by(Image.key, Job.id)).all()
        return [(k, e, q, sent is not None) for k, e, q, sent in rows]

    return read


@pytest.fixture
def receiver(db_url: str, notify_config: AppConfig, store: S3Store,
             sender) -> Iterator[Callable[..., NotifyServer]]:  # noqa: ANN001
    """Start the HTTP receiver on a free loopback port, with a static token or else ``--no-auth``; stopped after
    the test. ``db`` and ``objects`` stand in for the test's database and store, ``limits`` for the defaults."""
    started: list[tuple[NotifyServer, threading.Thread]] = []

    def start(token: str | None = None, db: str | None = None, objects: S3Store | None = None,
              limits: Limits = Limits()) -> NotifyServer:
        srv = NotifyServer(db or db_url, notify_config, objects or store, sender, "127.0.0.1", 0, token,
                           no_auth=token is None, limits=limits)
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        t.start()
        started.append((srv, t))
        return srv

    yield start
    for srv, t in started:
        srv.shutdown()
        srv.server_close()
        t.join(5)
