"""The chaos suite's fixtures: private servers it may stop (``servers``), a fresh database and bucket on them per
test (``chaos_env``), ``vlwatch`` processes with their logs (``start``), and camera-like images whose barcodes a
clean in-process run of the engine reads (``camera_image``, ``clean_run``)."""

from __future__ import annotations

import io
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import yaml
from PIL import Image as PILImage

from tests import images
from tests.chaos.servers import PrivateServers
from tests.processes import ROOT, Proc

SCALE = max(1, int(os.environ.get("VLWATCH_CHAOS_SCALE", "1")))  # the long run by hand: VLWATCH_CHAOS_SCALE=8
LEASE = 4.0
CONFIG = {"profiles": {"codes": {"analyzers": ["barcode"]}}, "sources": {"cam": {"prefix": "cam/", "profile": "codes"}}}


@pytest.fixture(scope="module")
def servers() -> Iterator[PrivateServers]:
    with PrivateServers() as s:
        yield s


@dataclass
class ChaosEnv:
    env: dict[str, str]
    db_url: str
    bucket: str
    servers: PrivateServers
    folder: Path

    def store(self):  # noqa: ANN201
        from services.storage import S3Store

        return S3Store(self.servers.s3_endpoint, self.env["VLWATCH_S3_ACCESS_KEY"], self.env["VLWATCH_S3_SECRET_KEY"],
                       self.bucket)

    def settings(self):  # noqa: ANN201
        from services.settings import load_settings

        return load_settings(self.env)


@pytest.fixture
def chaos_env(servers: PrivateServers, tmp_path: Path) -> Iterator[ChaosEnv]:
    """A migrated database and an empty bucket on the private servers, and the environment of vlwatch's
    processes (4 s leases, so recovery shows within seconds)."""
    import redis
    from sqlalchemy import create_engine, text

    from services.db import dispose_all
    from services.migrate import upgrade
    from tests.stack import S3_ACCESS_KEY, S3_SECRET_KEY

    for server in ("postgres", "redis", "s3"):  # up again, whatever an earlier test left stopped
        servers.start(server)
    name = f"chaos_{uuid.uuid4().hex[:8]}"
    admin = create_engine(servers.pg_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)  # outlives restarts
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    db_url = servers.pg_url.rsplit("/", 1)[0] + f"/{name}"
    upgrade(db_url)
    redis.Redis.from_url(servers.redis_url).flushdb()
    cfg = tmp_path / "vlwatch.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLWATCH_")}
    env.update({
        "VLWATCH_DATABASE_URL": db_url, "VLWATCH_BROKER_URL": servers.redis_url,
        "VLWATCH_S3_ENDPOINT": servers.s3_endpoint, "VLWATCH_S3_ACCESS_KEY": S3_ACCESS_KEY,
        "VLWATCH_S3_SECRET_KEY": S3_SECRET_KEY, "VLWATCH_BUCKET": name.replace("_", "-"),
        "VLWATCH_CONFIG": str(cfg), "VLWATCH_DATA_DIR": str(tmp_path / "data"), "VLWATCH_LEASE_SECONDS": str(LEASE),
        "VLWATCH_WEBHOOK_RETRY_SCHEDULE": "0.5,1,2,4,8,16,32", "VLWATCH_WORKER_MAX_MEMORY_MB": "2048",
        "VLWATCH_OUTBOUND_ALLOW": "127.0.0.1/32",  # the test's webhook receiver is on loopback
        "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT),
    })
    ce = ChaosEnv(env, db_url, env["VLWATCH_BUCKET"], servers, tmp_path)
    ce.store().ensure_bucket()
    yield ce
    dispose_all()
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def start(chaos_env: ChaosEnv) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def run(*args: str, ready: str | None = None, **env: str) -> Proc:
        p = Proc(list(args), {**chaos_env.env, **env}, chaos_env.folder / f"{args[0]}-{len(started)}.log", ready)
        started.append(p)
        return p

    yield run
    for p in started:
        p.stop()


def camera_image(i: int, size: tuple[int, int] = (800, 600)) -> bytes:
    """A grainy camera frame with a QR code of ``CAM-<i>`` somewhere in it (zxing takes ~0.1 s on it)."""
    rng = np.random.default_rng(i)
    frame = rng.integers(90, 170, size=(size[1], size[0], 3), dtype=np.uint8)  # [H, W, 3]
    im = PILImage.fromarray(frame, "RGB")
    qr = images.qr_image(f"CAM-{i:05d}", module_px=4)
    im.paste(qr, (int(rng.integers(0, size[0] - qr.width)), int(rng.integers(0, size[1] - qr.height))))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def clean_run(data: bytes) -> list[tuple[str, str]]:
    """What the barcode engine reads from ``data`` undisturbed, as sorted (format, value) pairs."""
    from model.decode import decode_image
    from model.engines.barcode import BarcodeAnalyzer

    decoded = decode_image(data, max_bytes=1 << 26, max_pixels=80_000_000)
    (result,) = BarcodeAnalyzer().analyze([decoded.image])
    return sorted(zip(result.detections.labels, result.detections.data["value"]))
