"""The operator's commands, run as a person would: separate processes over PostgreSQL, Redis and SeaweedFS."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image as PILImage

from services.cli.receiver import WebhookReceiver
from services.db import session_scope
from services.queries import job_counts
from tests import images
from tests.pipeline.conftest import ROOT, VLWATCH, wait_for

pytestmark = pytest.mark.services


def vlwatch(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*VLWATCH, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if ok:
        assert proc.returncode == 0, f"vlwatch {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_operator_flow(app_env, db_url, start_worker, tmp_path: Path):
    folder = tmp_path / "photos" / "aisle"
    folder.mkdir(parents=True)
    (folder / "label-a.png").write_bytes(images.label_png("WH-41001"))
    (folder / "label-b.png").write_bytes(images.label_png("WH-41002", qr=False))
    (tmp_path / "photos" / "readme.txt").write_text("not an image: skipped by upload")

    assert "database at revision" in vlwatch(app_env, "db", "upgrade").stdout
    start_worker()
    with WebhookReceiver() as rx:
        out = vlwatch(app_env, "webhooks", "add", "rx", rx.url, "--secret", rx.secret).stdout
        assert "added rx" in out
        assert "uploaded 2, skipped 0" in vlwatch(app_env, "upload", str(tmp_path / "photos"), "--source", "shelf").stdout
        assert "uploaded 0, skipped 2" in vlwatch(app_env, "upload", str(tmp_path / "photos"), "--source", "shelf").stdout

        def done() -> bool:
            with session_scope(db_url) as s:
                return job_counts(s)["succeeded"] == 2

        wait_for(done, 120, "both jobs")
        assert "succeeded=2" in vlwatch(app_env, "jobs").stdout

        res = json.loads(vlwatch(app_env, "results", "shelf/aisle/label-a.png", "--json").stdout)
        assert res["job"]["status"] == "succeeded"
        assert "WH-41001" in {b["value"] for b in res["results"]["barcodes"]}
        assert any("WH-41001" in t["text"].replace(" ", "") for t in res["results"]["text_lines"])
        assert "WH-41001" in vlwatch(app_env, "results", "shelf/aisle/label-a.png").stdout
        missing = vlwatch(app_env, "results", "shelf/nope.png", ok=False)
        assert missing.returncode != 0 and "no image with id or key 'shelf/nope.png'" in missing.stderr

        png = tmp_path / "out.png"
        vlwatch(app_env, "render", "shelf/aisle/label-a.png", "-o", str(png))
        with PILImage.open(png) as im:
            assert im.format == "PNG" and im.size == (res["image"]["width"], res["image"]["height"])

        def delivered() -> bool:
            vlwatch(app_env, "dispatch")
            return len(rx.events()) == 2

        wait_for(delivered, 30, "two webhooks")
        assert {e["payload"]["type"] for e in rx.events()} == {"job.succeeded"}
        listing = vlwatch(app_env, "webhooks", "list").stdout
        assert "rx" in listing and "delivered=2" in listing

        assert "2 delivery(ies) queued again" in vlwatch(app_env, "webhooks", "replay", "--all").stdout
        vlwatch(app_env, "dispatch")
        assert len(rx.hits) == 4 and len(rx.events()) == 2  # same webhook-ids: the receiver dedupes


def test_bad_configuration_is_reported_with_the_field(app_env, tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles: {p: {analyzers: [barcode, sonar]}}\n")
    for command in ("scan", "dispatch"):  # every command that uses the file reads and checks it first
        proc = vlwatch({**app_env, "VLWATCH_CONFIG": str(bad)}, command, ok=False)
        assert proc.returncode != 0
        assert "profiles.p.analyzers" in proc.stderr and "unknown analyzer 'sonar'" in proc.stderr
    proc = vlwatch({**app_env, "VLWATCH_LEASE_SECONDS": "soon"}, "jobs", ok=False)
    assert proc.returncode != 0 and "VLWATCH_LEASE_SECONDS" in proc.stderr


def test_listen_registers_objects_from_an_s3_event(app_env, db_url, runtime, tmp_path: Path):
    """`vlwatch listen` takes an S3 event notification (URL-encoded key) and registers the object once."""
    import socket

    import httpx
    from sqlalchemy import func, select

    from services.schema import Image, Job

    data = b"vlwatch notify sample one"
    runtime.store.put("shelf/a b+c é.png", data)
    doc = (ROOT / "tests" / "ingest" / "events" / "s3_put.json").read_text()
    doc = doc.replace("vlwatch-recorded", app_env["VLWATCH_BUCKET"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path / "listen.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([*VLWATCH, "listen", "--port", str(port), "--token", "t0k"], env=app_env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "listening" in (tmp_path / "listen.log").read_text(), 30, "vlwatch listen")
        url = f"http://127.0.0.1:{port}/events/s3"
        assert httpx.post(url, content=doc).status_code == 401  # no token
        for _ in range(3):  # a repeated event makes one job
            r = httpx.post(url, content=doc, headers={"authorization": "Bearer t0k"})
            assert r.status_code == 200, r.text
        bad = httpx.post(url, content=b"{not json", headers={"authorization": "Bearer t0k"})
        assert bad.status_code == 400 and bad.text
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
        assert s.execute(select(Image.key)).scalar_one() == "shelf/a b+c é.png"
