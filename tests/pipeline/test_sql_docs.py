"""Every query in docs/sql.md runs on PostgreSQL and returns what an analyst expects on known data, including an
image analysed twice (a reprocess): only its latest succeeded job's rows count."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import text

from services.db import session_scope
from services.schema import (
    BarcodeRow, ObjectRow, Image, Job, OutboxEvent, Source, TextLineRow, WebhookDelivery, WebhookSubscription, utcnow,
)
from tests.pipeline.conftest import ROOT

pytestmark = pytest.mark.services

SKU = r"WH-[0-9]{5}"


def _queries() -> dict[int, str]:
    doc = (ROOT / "docs" / "sql.md").read_text()
    found = re.findall(r"^### (\d+)\. .*?\n```sql\n(.*?)```", doc, flags=re.S | re.M)
    return {int(n): q for n, q in found}


def test_docs_hold_eighteen_queries():
    assert sorted(_queries()) == list(range(1, 19))


@pytest.fixture
def seeded(db_url: str) -> str:
    now = utcnow()
    with session_scope(db_url) as s:
        aisle, gate = Source(name="aisle-7", profile="labels", prefix="aisle-7/"), Source(name="gate", profile="sec")
        s.add_all([aisle, gate])
        s.flush()

        def image_job(src, key, status="succeeded", finished=now, error=None, img=None):  # noqa: ANN001, ANN202
            if img is None:
                img = Image(source_id=src.id, bucket="b", key=key, etag=key, size=1, width=100, height=50)
                s.add(img)
                s.flush()
            job = Job(image_id=img.id, profile=src.profile, queue="cpu", status=status, finished_at=finished,
                      error=error, timings={"fetch": 0.01, "decode": 0.02, "barcode": 0.1}, attempts=1)
            s.add(job)
            s.flush()
            return img, job

        box = {"x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 20.0}
        # a.png was analysed twice: the first job read WH-99999 and "SKU: WH-99999"; the reprocess (the later job)
        # reads WH-10427. Only the later job's rows are current. A failed attempt before it is superseded.
        a, j_old = image_job(aisle, "aisle-7/a.png", finished=now - timedelta(days=2))
        s.add(BarcodeRow(job_id=j_old.id, image_id=a.id, analyzer="barcode", format="Code128", value="WH-99999", **box))
        s.add(TextLineRow(job_id=j_old.id, image_id=a.id, analyzer="ocr", text="SKU: WH-99999", score=0.5, **box))
        image_job(aisle, "aisle-7/a.png", status="failed", finished=now - timedelta(days=1), error="x", img=a)
        _, ja = image_job(aisle, "aisle-7/a.png", img=a)
        s.add(BarcodeRow(job_id=ja.id, image_id=a.id, analyzer="barcode", format="Code128", value="WH-10427", **box))
        s.add(TextLineRow(job_id=ja.id, image_id=a.id, analyzer="ocr", text="SKU: WH-10427", score=0.98, **box))
        b, jb = image_job(aisle, "aisle-7/b.png")
        s.add(TextLineRow(job_id=jb.id, image_id=b.id, analyzer="ocr", text="SKU: WH-20001", score=0.91, **box))
        old, jold = image_job(aisle, "aisle-7/old.png", finished=now - timedelta(days=3))
        s.add(BarcodeRow(job_id=jold.id, image_id=old.id, analyzer="barcode", format="QRCode", value="WH-10427", **box))
        image_job(aisle, "aisle-7/broken.jpg", status="failed", error="bad image: truncated JPEG")
        image_job(aisle, "aisle-7/old-broken.jpg", status="failed", finished=now - timedelta(hours=5), error="x")
        image_job(aisle, "aisle-7/waiting.png", status="queued", finished=None)
        g, jg = image_job(gate, "gate/cam.jpg")
        for label, score in (("person", 0.9), ("person", 0.3), ("forklift", 0.95)):
            s.add(ObjectRow(job_id=jg.id, image_id=g.id, analyzer="vl2-ground", label=label, phrase=label,
                            score=score, **box))
        sub = WebhookSubscription(name="erp", url="http://127.0.0.1:9/", secret="whsec_eA==", event_types=["*"])
        ev = OutboxEvent(event_id="msg_1", type="job.succeeded", job_id=ja.id, payload={})
        s.add_all([sub, ev])
        s.flush()
        s.add(WebhookDelivery(event_id=ev.id, subscription_id=sub.id, status="dead", attempts=4,
                              last_status_code=503, last_error="503 Service Unavailable", last_attempt_at=now))
    return db_url


def run(db_url: str, n: int, **params: object) -> list[tuple]:
    with session_scope(db_url) as s:
        return [tuple(r) for r in s.execute(text(_queries()[n]), params)]


def test_q1_skus_at_source_today(seeded):
    rows = run(seeded, 1, source="aisle-7", sku_pattern=SKU)
    assert sorted((r[0], r[1], r[2]) for r in rows) == [
        ("WH-10427", "barcode", "aisle-7/a.png"), ("WH-10427", "ocr", "aisle-7/a.png"),
        ("WH-20001", "ocr", "aisle-7/b.png"),
    ]


def test_q2_images_with_barcode_value(seeded):
    assert [(r[1], r[2]) for r in run(seeded, 2, value="WH-10427")] == [
        ("aisle-7/a.png", "Code128"), ("aisle-7/old.png", "QRCode")]


def test_q3_failed_last_hour(seeded):
    rows = run(seeded, 3)
    assert [(r[1], r[3]) for r in rows] == [("aisle-7/broken.jpg", "bad image: truncated JPEG")]


def test_q4_queue_by_status(seeded):
    counts = {r[0]: r[1] for r in run(seeded, 4)}
    assert counts == {"failed": 3, "queued": 1, "succeeded": 5}


def test_q5_sku_text(seeded):
    assert [r[0] for r in run(seeded, 5, sku_pattern=SKU)] == ["SKU: WH-10427", "SKU: WH-20001"]


def test_q6_labels_without_barcode(seeded):
    assert [r[0] for r in run(seeded, 6, source="aisle-7")] == ["aisle-7/b.png"]


def test_q7_per_source_per_day(seeded):
    rows = run(seeded, 7)
    today = {(r[0], r[2], r[3]) for r in rows if r[1] >= utcnow().replace(hour=0, minute=0, second=0, microsecond=0)}
    assert today == {("aisle-7", 2, 1), ("gate", 1, 0)}
    assert len(rows) == 3  # plus aisle-7 three days ago


def test_q8_stage_times(seeded):
    rows = {r[0]: (r[1], round(r[2], 3)) for r in run(seeded, 8)}
    assert rows == {"barcode": (5, 0.1), "decode": (5, 0.02), "fetch": (5, 0.01)}  # every job run counts


def test_q9_confident_detections(seeded):
    rows = run(seeded, 9, source="gate", label="person", min_score=0.5)
    assert [(r[0], r[1]) for r in rows] == [("person", 0.9)]


def test_q10_dead_deliveries(seeded):
    assert [(r[0], r[2], r[4]) for r in run(seeded, 10)] == [("erp", "msg_1", 503)]


def test_superseded_rows_are_not_current(seeded):
    assert run(seeded, 2, value="WH-99999") == []
    assert [r[0] for r in run(seeded, 5, sku_pattern="WH-99999")] == []


def test_q16_current_results_of_one_image(seeded):
    rows = run(seeded, 16, key="aisle-7/a.png")
    assert [(r[0], r[2], r[3]) for r in rows] == [("barcodes", "Code128", "WH-10427"),
                                                  ("text_lines", "text", "SKU: WH-10427")]


def test_q17_sku_sightings(seeded):
    rows = run(seeded, 17, sku="WH-10427")
    assert sorted((r[1], r[2]) for r in rows) == [("aisle-7/a.png", "barcode"), ("aisle-7/a.png", "ocr"),
                                                  ("aisle-7/old.png", "barcode")]
    assert run(seeded, 17, sku="WH-99999") == []


def test_q18_failed_jobs_needing_a_look(seeded):
    rows = run(seeded, 18)
    assert {(r[0], r[1], r[2]) for r in rows} == {("bad image: truncated JPEG", 1, "aisle-7/broken.jpg"),
                                                  ("x", 1, "aisle-7/old-broken.jpg")}  # a.png's failure is superseded
