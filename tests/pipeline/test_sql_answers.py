"""The analyst queries of docs/sql.md about answers to checks and find-all counts (11-15) on PostgreSQL, against
known data."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.db import session_scope
from services.schema import AnswerRow, Image, Job, ObjectRow, Source, utcnow
from tests.pipeline.test_sql_docs import run

pytestmark = pytest.mark.services

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=timezone.utc)
BOX = {"x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 20.0}


@pytest.fixture
def seeded(db_url: str) -> str:
    now = utcnow()
    with session_scope(db_url) as s:
        dock, gate = Source(name="dock", profile="dock", prefix="dock/"), Source(name="gate", profile="gate")
        s.add_all([dock, gate])
        s.flush()

        def image(src: Source, key: str, captured: datetime | None, uploaded: datetime, finished: datetime) -> tuple:
            img = Image(source_id=src.id, bucket="b", key=key, etag=key, size=1, width=100, height=50,
                        captured_at=captured, uploaded_at=uploaded)
            s.add(img)
            s.flush()
            job = Job(image_id=img.id, profile=src.profile, queue="gpu", status="succeeded", finished_at=finished,
                      attempts=1)
            s.add(job)
            s.flush()
            return img, job

        def answer(ij: tuple, check: str, kind: str, status: str = "ok", value: object = None,
                   passed: bool | None = None, raw: str = "", reason: str | None = None) -> None:
            img, job = ij
            cols = {"value_bool": value if kind == "yes_no" else None,
                    "value_number": value if kind == "number" else None,
                    "value_text": value if kind in ("choice", "text") else None}
            s.add(AnswerRow(job_id=job.id, image_id=img.id, analyzer="vl2-ask", check_name=check, question="?",
                            kind=kind, status=status, raw_text=raw or str(value), confidence=0.9, reason=reason,
                            passed=passed, severity="high" if check == "fire-exit-clear" else "warning", **cols))

        old = image(dock, "dock/old.jpg", T0 - timedelta(days=3), T0 - timedelta(days=3), now - timedelta(days=3))
        i1 = image(dock, "dock/1.jpg", T0, T0 + timedelta(hours=1), now)
        i2 = image(dock, "dock/2.jpg", T0 + timedelta(minutes=1), T0 + timedelta(hours=1), now)
        i3 = image(dock, "dock/3.jpg", T0 + timedelta(minutes=2), T0 + timedelta(hours=1), now)
        i4 = image(dock, "dock/4.jpg", None, T0 + timedelta(minutes=3), now)  # no EXIF: upload time orders it
        g = image(gate, "gate/1.jpg", T0, T0, now)
        answer(old, "fire-exit-clear", "yes_no", value=True, passed=False)
        for ij, count, exit_blocked, door in ((i1, 3, False, "open"), (i2, 14, True, "open"),
                                              (i3, None, False, "closed"), (i4, 14, None, "closed")):
            if count is None:
                answer(ij, "pallets-on-dock", "number", "unparsed", raw="many", reason="no number in the answer")
            else:
                answer(ij, "pallets-on-dock", "number", value=count, passed=count <= 12)
            if exit_blocked is not None:
                answer(ij, "fire-exit-clear", "yes_no", value=exit_blocked, passed=not exit_blocked)
            answer(ij, "dock-door", "choice", value=door)
            answer(ij, "summary", "text", value=f"text {door}")  # text answers are never compared
        answer(g, "vest", "yes_no", value=True, passed=False)
        for (img, job), label, score in ((i1, "pallet", 0.9), (i1, "pallet", 0.8), (i1, "pallet", 0.2),
                                         (i1, "forklift", 0.7), (i2, "pallet", 0.6)):
            s.add(ObjectRow(job_id=job.id, image_id=img.id, analyzer="vl2-ground", label=label, phrase=label,
                            score=score, **BOX))
        s.add(ObjectRow(job_id=i2[1].id, image_id=i2[0].id, analyzer="vl2-ask", label="pallet", phrase="pallet",
                        score=0.99, **BOX))  # a grounded answer's box: not a find-all count
    return db_url


def test_q11_checks_failed_today_per_source(seeded):
    assert [(r[0], r[1], r[2], r[3]) for r in run(seeded, 11)] == [
        ("dock", "pallets-on-dock", "warning", 2), ("dock", "fire-exit-clear", "high", 1), ("gate", "vest", "warning", 1)]


def test_q12_number_series(seeded):
    rows = run(seeded, 12, source="dock", check="pallets-on-dock")
    assert [(r[1], r[2], r[3]) for r in rows] == [("dock/1.jpg", 3.0, True), ("dock/2.jpg", 14.0, False),
                                                  ("dock/4.jpg", 14.0, False)]


def test_q13_answers_changed_from_previous_image(seeded):
    assert [(r[1], r[2], r[4], r[5], r[6]) for r in run(seeded, 13)] == [
        ("dock-door", "dock/3.jpg", "open", "closed", "dock/2.jpg"),
        ("fire-exit-clear", "dock/1.jpg", "true", "false", "dock/old.jpg"),
        ("fire-exit-clear", "dock/2.jpg", "false", "true", "dock/1.jpg"),
        ("fire-exit-clear", "dock/3.jpg", "true", "false", "dock/2.jpg"),
        ("pallets-on-dock", "dock/2.jpg", "3", "14", "dock/1.jpg"),
    ]


def test_q14_unparsed_answers(seeded):
    assert [(r[1], r[2], r[4], r[5]) for r in run(seeded, 14)] == [
        ("dock/3.jpg", "pallets-on-dock", "many", "no number in the answer")]


def test_q15_objects_per_label(seeded):
    rows = run(seeded, 15, source="dock", min_score=0.5)
    assert [(r[0], r[1], r[2], round(r[3], 3)) for r in rows] == [
        ("dock/1.jpg", "forklift", 1, 0.7), ("dock/1.jpg", "pallet", 2, 0.85), ("dock/2.jpg", "pallet", 1, 0.6)]
