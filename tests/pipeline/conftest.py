"""Celery workers as separate processes against real PostgreSQL, Redis and SeaweedFS."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml

from tests.processes import ROOT, Proc
from tests.waiting import wait_for  # noqa: F401 - imported from here by the pipeline tests

VLWATCH = [sys.executable, "-m", "services"]

CONFIG = {
    "profiles": {
        "labels": {"analyzers": ["barcode", "ocr"]},
        "codes": {"analyzers": ["barcode"]},
        "gpu": {"analyzers": ["vl2-ground"], "phrases": ["pallet"], "queue": "cpu"},
    },
    "sources": {
        "shelf": {"prefix": "shelf/", "profile": "labels"},
        "dock": {"prefix": "dock/", "profile": "codes"},
        "yard": {"prefix": "yard/", "profile": "gpu"},
    },
}


@pytest.fixture(scope="session")
def app_env(migrated_pg: str, redis_url: str, s3_settings, tmp_path_factory) -> dict[str, str]:  # noqa: ANN001
    """Environment for vlwatch processes: PostgreSQL, Redis broker, SeaweedFS bucket, the test YAML file."""
    d = tmp_path_factory.mktemp("vlwatch")
    cfg = d / "vlwatch.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    env = dict(os.environ)
    env.update({
        "VLWATCH_DATABASE_URL": migrated_pg,
        "VLWATCH_BROKER_URL": redis_url,
        "VLWATCH_S3_ENDPOINT": s3_settings.endpoint,
        "VLWATCH_S3_ACCESS_KEY": s3_settings.access_key,
        "VLWATCH_S3_SECRET_KEY": s3_settings.secret_key,
        "VLWATCH_BUCKET": s3_settings.bucket,
        "VLWATCH_CONFIG": str(cfg),
        "VLWATCH_DATA_DIR": str(d / "data"),
        "VLWATCH_LEASE_SECONDS": "4",
        "VLWATCH_WEBHOOK_RETRY_SCHEDULE": "0.2,0.4,0.8",
        "VLWATCH_OUTBOUND_ALLOW": "127.0.0.0/8",  # the receivers and target databases of the tests
        "PYTHONUNBUFFERED": "1",
    })
    return env


@pytest.fixture
def settings(app_env: dict[str, str], db_url: str):  # noqa: ANN201
    """Settings as a worker reads them, over an emptied database."""
    from services.settings import load_settings

    return load_settings(app_env)


@pytest.fixture
def runtime(settings):  # noqa: ANN001, ANN201
    from workers.runtime import Runtime

    rt = Runtime.from_settings(settings)
    rt.store.ensure_bucket()
    return rt


@pytest.fixture(scope="session")
def celery_app(app_env: dict[str, str]):  # noqa: ANN201
    from services.settings import Settings
    from workers.app import make_app

    return make_app(Settings(broker_url=app_env["VLWATCH_BROKER_URL"]))


@pytest.fixture
def send_job(celery_app):  # noqa: ANN001, ANN201
    from workers.app import sender_for

    return sender_for(celery_app)


class WorkerProcess(Proc):
    """``vlwatch worker`` (solo pool) in its own process, with its log in a file; ready when Celery says so."""

    def __init__(self, env: dict[str, str], log: Path, queues: str = "cpu") -> None:
        super().__init__(["worker", "--queues", queues, "--pool", "solo", "--loglevel", "INFO"], env, log,
                         ready=" ready.")


@pytest.fixture
def start_worker(app_env: dict[str, str], tmp_path: Path, redis_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes for one test; all are stopped after it. The Redis queues start empty."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    started: list[WorkerProcess] = []

    def start(queues: str = "cpu", **env_overrides: str) -> WorkerProcess:
        env = {**app_env, **env_overrides}
        w = WorkerProcess(env, tmp_path / f"worker-{len(started)}-{uuid.uuid4().hex[:6]}.log", queues)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
