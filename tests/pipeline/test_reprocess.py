"""Reprocessing 200 analysed images after their profile changed, through real worker processes on PostgreSQL,
Redis and SeaweedFS: the old rows stay, the current views switch to the new jobs, the documented queries answer as
before where nothing changed, and ``vlwatch diff`` lists exactly the planted changes.

The planted change: profile ``codes`` turns the barcode scene pass on. 20 of the 200 images hold a Code128 turned by
25-35 degrees, which the single pass cannot read and the scene pass can; the other 180 hold an upright QR code,
which both read. A re-run of one new job (its lease lost) replaces its own rows and touches no other job's.
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from PIL import Image
from sqlalchemy import func, select, text, update

from services.config import parse_config
from services.db import session_scope
from services.ingest.upload import upload
from services.schema import BarcodeRow, Job
from tests.images import code128_image, qr_image
from tests.pipeline.conftest import CONFIG, ROOT, VLWATCH, wait_for
from tests.pipeline.test_sql_docs import SKU, _queries

pytestmark = [pytest.mark.services, pytest.mark.slow]

TURNED = 20
TOTAL = 200


def turned_code(i: int) -> Image.Image:
    c = code128_image(f"WH-{30000 + i}", module_px=2, height=70)
    im = Image.new("RGB", (c.width + 40, c.height + 40), "white")
    im.paste(c, (20, 20))
    return im.rotate(25 + (i % 3) * 5, expand=True, fillcolor=(120, 120, 120), resample=Image.BICUBIC)


def profile_config(scene_pass: bool) -> dict:
    cfg = json.loads(json.dumps(CONFIG))
    cfg["profiles"]["codes"]["options"] = {"barcode": {"scene_pass": scene_pass}}
    return cfg


def vlwatch(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([*VLWATCH, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"vlwatch {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def documented(db_url: str) -> dict[int, list[tuple]]:
    """Every documented query's answer, times left out (a reprocess finishes its jobs later, by design)."""
    params = {"source": "dock", "sku_pattern": SKU, "value": "WH-30001", "label": "pallet", "min_score": 0.0,
              "key": "dock/plain-100.png", "sku": "WH-30001", "check": "fire-exit-clear"}
    out = {}
    with session_scope(db_url) as s:
        for n, sql in _queries().items():
            rows = s.execute(text(sql), {k: v for k, v in params.items() if f":{k}" in sql}).all()
            out[n] = sorted(tuple(str(v) for v in r if not isinstance(v, datetime)) for r in rows)
    return out


def succeeded(db_url: str) -> int:
    with session_scope(db_url) as s:
        return s.execute(select(func.count()).select_from(Job).where(Job.status == "succeeded")).scalar_one()


def test_reprocess_keeps_old_rows_switches_current_and_diff_lists_planted_changes(
        app_env, db_url, start_worker, send_job, runtime, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(TOTAL):
        im = turned_code(i) if i < TURNED else qr_image(f"https://wh.example/pallet/{i}", module_px=3)
        im.save(folder / (f"turned-{i:03d}.png" if i < TURNED else f"plain-{i:03d}.png"))
    v1, v2 = tmp_path / "v1.yaml", tmp_path / "v2.yaml"
    v1.write_text(yaml.safe_dump(profile_config(False)))
    v2.write_text(yaml.safe_dump(profile_config(True)))
    env2 = app_env | {"VLWATCH_CONFIG": str(v2)}

    worker = start_worker(VLWATCH_CONFIG=str(v1))
    report = upload(db_url, parse_config(v1.read_text()), runtime.store, [folder], "dock", send_job)
    assert report.uploaded == TOTAL
    wait_for(lambda: succeeded(db_url) == TOTAL, 300, "the first analysis of 200 images")
    worker.stop()
    with session_scope(db_url) as s:
        old_jobs = set(s.execute(select(Job.id)).scalars())
        old_rows = sorted(s.execute(select(BarcodeRow.job_id, BarcodeRow.value)).all())
    assert len(old_rows) == TOTAL - TURNED  # the single pass read every QR code and none of the turned codes
    before = documented(db_url)
    assert len(before[2]) == 0 and len(before[6]) == TURNED  # WH-30001 not read; 20 images without a barcode

    between = datetime.now(timezone.utc).isoformat()
    assert f"queued {TOTAL} job(s) for source dock" in vlwatch(env2, "reprocess", "--source", "dock")
    # while they wait, a second reprocess queues nothing: each image has its job of the profile queued
    assert "queued 0 job(s)" in vlwatch(env2, "reprocess", "--source", "dock", "--since", "2000-01-01T00:00")
    start_worker(VLWATCH_CONFIG=str(v2))
    wait_for(lambda: succeeded(db_url) == 2 * TOTAL, 300, "the reprocess of 200 images")

    with session_scope(db_url) as s:
        assert sorted(s.execute(select(BarcodeRow.job_id, BarcodeRow.value).where(
            BarcodeRow.job_id.in_(old_jobs))).all()) == old_rows  # the old rows are all still there
        current = set(s.execute(text("SELECT id FROM current_jobs")).scalars())
        assert len(current) == TOTAL and not current & old_jobs
        lineage = s.execute(select(Job.lineage).where(Job.id == min(current))).scalar_one()
        assert lineage[0]["settings"]["scene_pass"] is True
        values = set(s.execute(text("SELECT value FROM current_barcodes")).scalars())
        assert len(values) == TOTAL and {f"WH-{30000 + i}" for i in range(TURNED)} <= values
        assert s.execute(text("SELECT count(*) FROM barcodes")).scalar_one() == 2 * TOTAL - TURNED

    after = documented(db_url)
    for n in (3, 5, 9, 10, 11, 13):  # about nothing that changed: the same answers
        assert after[n] == before[n], n
    assert len(after[2]) == 1 and after[6] == []  # WH-30001 is now read; every image has a barcode
    assert len(after[1]) == len(before[1]) + TURNED and set(before[1]) <= set(after[1])
    assert len(after[17]) == 1
    assert before[4] == [("succeeded", str(TOTAL))] and after[4] == [("succeeded", str(2 * TOTAL))]  # every run
    assert before[7] == [("dock", str(TOTAL), str(TOTAL - TURNED))] and after[7] == [("dock", str(TOTAL), str(TOTAL))]

    changes = json.loads(vlwatch(env2, "diff", f"jobs:..{between}", f"jobs:{between}..", "--source", "dock",
                                 "--json"))
    assert (changes["images_a"], changes["images_b"]) == (TOTAL, TOTAL)
    assert {c["image"] for c in changes["changes"]} == {f"dock/turned-{i:03d}.png" for i in range(TURNED)}
    for c in changes["changes"]:
        i = int(re.search(r"(\d+)", c["image"]).group(1))
        assert c["barcodes_gained"] == [f"Code128 WH-{30000 + i}"] and c["barcodes_lost"] == []
        assert not (c["text_changed"] or c["text_gained"] or c["objects_gained"] or c["answers_changed"])
    table = vlwatch(env2, "diff", f"jobs:..{between}", "current", "--source", "dock")
    assert f"{TURNED} image(s) changed" in table and "barcodes gained: Code128 WH-30000" in table

    # a lost lease: the same new job runs again (attempt 2) and replaces its own rows, nothing else
    job_id = min(current)
    with session_scope(db_url) as s:
        rows_before = s.execute(select(func.count()).select_from(BarcodeRow)).scalar_one()
        s.execute(update(Job).where(Job.id == job_id).values(status="queued", lease_owner=None))
    send_job([job_id], "cpu")

    def rerun_done() -> bool:
        with session_scope(db_url) as s:
            return s.execute(select(Job.attempts, Job.status).where(Job.id == job_id)).one() == (2, "succeeded")

    wait_for(rerun_done, 60, "the re-run of one job")
    with session_scope(db_url) as s:
        assert s.execute(select(func.count()).select_from(BarcodeRow)).scalar_one() == rows_before
        assert s.execute(select(func.count()).select_from(BarcodeRow).where(BarcodeRow.job_id == job_id)
                         ).scalar_one() == 1
