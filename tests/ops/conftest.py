"""A site in operation, for the API, page, access and metrics tests: real PostgreSQL, Redis and SeaweedFS; a
prefork worker, the API (`vlwatch serve`), the listener and the dispatcher as separate processes; the samples
analysed by the worker; tokens of several scopes; /metrics scraped at the moments that matter."""

from __future__ import annotations

import io
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml
from PIL import Image as PILImage
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from services.db import get_engine, session_scope
from services.schema import AnswerRow, Base, Image, Job, ObjectRow
from services.tokens import add_token
from tests import images
from tests.ingest.events import doc
from tests.ops.procs import Proc, answers, free_port, sample, scrape
from tests.pipeline.conftest import ROOT, VLWATCH, app_env, celery_app  # noqa: F401 - fixtures used here
from tests.waiting import wait_for

SAMPLES = ROOT / "samples"
SITE_CONFIG = {
    "profiles": {"labels": {"analyzers": ["barcode", "ocr"]}, "codes": {"analyzers": ["barcode"]}},
    "sources": {"shelf": {"prefix": "shelf/", "profile": "labels"},
                "dock": {"prefix": "dock/", "profile": "codes", "timezone": "Europe/Berlin"}},
}
# OCR costs seconds per image on a CPU: one shelf image runs it, the dock's run barcodes only.
SHELF = ["label_WH-10427.png"]
DOCK = ["label_WH-38812_qr_only.png", "label_WH-40075_code128_only.png", "shelf_photo_WH-51200_WH-51201.jpg"]
PHOTO = DOCK[2]  # gets the rows of a VL2 grounding as well
NIGHT = "night_WH-70001.jpg"  # a dock camera's picture, EXIF 23:30 local time without an offset
BROKEN = "notes.jpg"  # not an image: its job fails with a reason
PRESIGNED = "label_WH-40075_code128_only.png"  # put into dock/ through a presigned URL


def night_jpeg() -> bytes:
    exif = PILImage.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2026:01:15 23:30:00"
    buf = io.BytesIO()
    PILImage.open(io.BytesIO(images.label_png("WH-70001"))).convert("RGB").save(buf, "JPEG", quality=92,
                                                                                 exif=exif.tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def target_url(pg_url: str) -> Iterator[str]:
    """A database of its own for a security connector's rows (as a site has)."""
    url = make_url(pg_url)
    name = f"{url.database}_security"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield url.set(database=name).render_as_string(hide_password=False)
    from services.db import dispose_all

    dispose_all()
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@dataclass
class Site:
    api: str
    listener: str
    tokens: dict[str, str]
    ids: dict[str, int]  # file name -> image id
    scrapes: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    shots: Path = Path(".")

    def get(self, path: str, token: str | None = None, **params: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[token]}"} if token else {}
        return httpx.get(self.api + path, params=params, headers=headers, timeout=30)


def _done(db_url: str, n: int) -> bool:
    with session_scope(db_url) as s:
        return s.scalar(select(func.count()).select_from(Job).where(Job.status.in_(["succeeded", "failed"]))) >= n


@pytest.fixture(scope="module")
def site(app_env, migrated_pg, redis_url, celery_app, tmp_path_factory) -> Iterator[Site]:  # noqa: ANN001, F811
    import redis

    from services.config import parse_config
    from services.ingest.upload import upload
    from services.storage import store_from_settings
    from services.settings import load_settings
    from workers.app import sender_for

    d = tmp_path_factory.mktemp("site")
    (d / "vlwatch.yaml").write_text(yaml.safe_dump(SITE_CONFIG))
    env = {**app_env, "VLWATCH_CONFIG": str(d / "vlwatch.yaml"), "VLWATCH_WEBHOOK_RETRY_SCHEDULE": "0.1,0.1"}
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with get_engine(migrated_pg).begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    redis.Redis.from_url(redis_url).flushdb()
    config = parse_config(yaml.safe_dump(SITE_CONFIG))
    settings = load_settings(env)
    store = store_from_settings(settings)
    with session_scope(migrated_pg) as s:
        tokens = {"all": add_token(s, "all"), "shelf": add_token(s, "shelf-reader", ["shelf"]),
                  "dock": add_token(s, "dock-reader", ["dock"]),
                  "dock-upload": add_token(s, "dock-uploader", ["dock"], can_upload=True),
                  "bucket": add_token(s, "bucket-notifier", None, can_upload=True)}
    files = d / "in"
    for source, names in (("shelf", SHELF), ("dock", DOCK)):
        (files / source).mkdir(parents=True)
        for n in names:
            (files / source / n).write_bytes((SAMPLES / n).read_bytes())
    (files / "dock" / NIGHT).write_bytes(night_jpeg())
    (files / "dock" / BROKEN).write_bytes(images.text_as_jpg())
    started: list[Proc] = []
    try:
        api_port, listen_port, worker_port, dispatch_port = (free_port() for _ in range(4))
        api = f"http://127.0.0.1:{api_port}"
        started.append(Proc(["serve", "--port", str(api_port)], env, d / "api.log", answers(api + "/healthz")))
        listener = f"http://127.0.0.1:{listen_port}"
        started.append(Proc(["listen", "--port", str(listen_port), "--token", "static-notify-token"], env,
                            d / "listen.log", answers(listener + "/healthz")))
        send = sender_for(celery_app)
        for source in ("shelf", "dock"):  # one task message per source: 2 on the cpu queue
            upload(migrated_pg, config, store, [files / source], source, send)
        site = Site(api, listener, tokens, {}, env=env, shots=d)
        site.scrapes["api_before_worker"] = scrape(api + "/metrics")

        started.append(Proc(["worker", "--queues", "cpu", "--pool", "prefork", "--concurrency", "2",
                             "--metrics-port", str(worker_port)], env, d / "worker.log",
                            lambda p: " ready." in p.text()))
        wait_for(lambda: _done(migrated_pg, 6), 180, "the uploaded images' jobs to finish")

        # A client without S3 credentials: a presigned PUT, then the bucket notification registers it.
        ticket = httpx.post(api + "/api/v1/uploads", json={"source": "dock", "filename": PRESIGNED,
                                                           "content_type": "image/png"},
                            headers={"Authorization": f"Bearer {tokens['dock-upload']}"}).json()
        data = (SAMPLES / PRESIGNED).read_bytes()
        assert httpx.put(ticket["url"], content=data, headers=ticket["headers"]).status_code == 200
        event = doc("s3_put.json", store.bucket)
        obj = event["Records"][0]["s3"]["object"]
        obj.update(key=ticket["key"], size=len(data), eTag=store.stat(ticket["key"]).etag)
        body = json.dumps(event).encode()
        site.scrapes["listener_refusals"] = "|".join(str(httpx.post(listener + "/events/s3", content=body, headers=h)
                                                         .status_code) for h in (
            {}, {"Authorization": f"Bearer {tokens['dock-upload']}"}, {"Authorization": "Bearer nope"}))
        r = httpx.post(listener + "/events/s3", content=body, headers={"Authorization": f"Bearer {tokens['bucket']}"})
        assert r.status_code == 200 and r.json()["registered"] == 1, r.text
        wait_for(lambda: _done(migrated_pg, 7), 120, "the presigned upload's job to finish")

        with session_scope(migrated_pg) as s:
            site.ids = {k.rsplit("/", 1)[-1]: i for i, k in s.execute(select(Image.id, Image.key))}
            site.ids["presigned"] = site.ids.pop(ticket["key"].rsplit("/", 1)[-1])
            photo = site.ids[PHOTO]
            job = s.scalar(select(Job.id).where(Job.image_id == photo))
            # DeepSeek-VL2 cannot run without its weights here: its rows, as its commit writes them.
            for label, score, box in (("pallet", 0.92, (40, 60, 700, 560)), ("person", 0.35, (900, 80, 1100, 600))):
                s.add(ObjectRow(job_id=job, image_id=photo, analyzer="vl2-ground", label=label, phrase=label,
                                x1=box[0], y1=box[1], x2=box[2], y2=box[3], score=score))
            for image, passed in ((photo, False), (site.ids[SHELF[0]], True)):  # and vl2-ask's answers
                s.add(AnswerRow(job_id=s.scalar(select(Job.id).where(Job.image_id == image)), image_id=image,
                                analyzer="vl2-ask", check_name="fire-exit-clear", question="Is the fire exit blocked?",
                                kind="yes_no", status="ok", raw_text="Yes." if not passed else "No.",
                                value_bool=not passed, expected={"equals": False}, passed=passed, severity="high"))
        site.scrapes["api_after_run"] = scrape(api + "/metrics")

        from connectors.webhooks import add_subscription

        with session_scope(migrated_pg) as s:  # a subscriber that never answers: deliveries retry, then die
            add_subscription(s, "gone", f"http://127.0.0.1:{free_port()}/hook", ["*"])
        once = subprocess.run([*VLWATCH, "dispatch"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert once.returncode == 0, once.stderr
        site.scrapes["api_pending"] = scrape(api + "/metrics")
        dispatcher = f"http://127.0.0.1:{dispatch_port}/metrics"
        started.append(Proc(["dispatch", "--watch", "--metrics-port", str(dispatch_port)], env, d / "dispatch.log",
                            answers(dispatcher)))
        wait_for(lambda: sample(scrape(dispatcher), "vlwatch_deliveries", kind="webhook", target="gone",
                                status="dead") == 7, 60, "every delivery to be dead-lettered")
        site.scrapes["dispatcher"] = scrape(dispatcher)
        site.scrapes["worker"] = scrape(f"http://127.0.0.1:{worker_port}/metrics")
        site.scrapes["listener"] = scrape(listener + "/metrics")
        site.scrapes["api_final"] = scrape(api + "/metrics")
        yield site
    finally:
        for p in reversed(started):
            p.stop()
