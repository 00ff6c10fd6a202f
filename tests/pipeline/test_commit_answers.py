"""Committing answers on PostgreSQL: a grounded answer's boxes become objects rows linked to their answer (in SQL and
in the job.succeeded payload), `vlwatch render` draws them, and a re-run replaces answers and boxes."""

from __future__ import annotations

import io

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select, update

from model.analyzers import AnalyzerResult, Lineage
from model.decode import decode_image
from model.detections import Detections
from model.vl2.ask import Check, CheckAnswer
from services.db import session_scope
from services.ingest.register import register_and_send
from services.queries import find_image, image_results
from services.render import render_annotated
from services.schema import AnswerRow, Job, ObjectRow, OutboxEvent
from workers.commit import commit
from workers.lease import claim
from workers.pipeline import Work

pytestmark = pytest.mark.services

RAW = "Yes, <|ref|>a pallet<|/ref|><|det|>[[0, 0, 499, 999]]<|/det|> blocks the exit."


def _png() -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (64, 48), (250, 250, 250)).save(buf, format="PNG")
    return buf.getvalue()


def _decode(data: bytes):  # noqa: ANN202
    return decode_image(data, max_bytes=1 << 20, max_pixels=1 << 20)


def _analysed(db_url: str, job_id: int, data: bytes) -> Work:
    (c,) = claim(db_url, "w1", 60, [job_id])
    w = Work.of(c)
    w.data, w.decoded = data, _decode(data)
    check = Check("exit-blocked", "Is the exit blocked?", "yes_no", grounded=True, severity="high")
    boxes = Detections.from_grid_boxes((64, 48), ["a pallet"], [(0, 0, 499, 999)], [0.8], {"phrase": ["a pallet"]})
    answer = CheckAnswer(check, "ok", RAW, True, 0.9, None, False, boxes)
    lineage = Lineage("vl2-ask", "deepseek-vl2", "1", checkpoint_digest="sha256:x", prompt=check.prompt)
    w.results = [AnalyzerResult(Detections.empty("objects", (64, 48)), lineage, (answer,))]
    return w


@pytest.fixture(params=["pg", "sqlite"])
def any_db(request) -> str:  # noqa: ANN001
    """PostgreSQL, and SQLite (the embedded default: RETURNING of many rows must hold there too)."""
    return request.getfixturevalue("db_url" if request.param == "pg" else "sqlite_url")


def test_grounded_answer_boxes_link_to_their_answer(runtime, any_db):  # noqa: ANN001
    db_url = any_db
    data = _png()
    info = runtime.store.put("yard/grounded.png", data, content_type="image/png")
    (reg,) = register_and_send(db_url, runtime.config, runtime.store.bucket, [info], lambda ids, queue: None)
    assert [o.status for o in commit(db_url, "w1", [_analysed(db_url, reg.job_id, data)])] == ["succeeded"]
    with session_scope(db_url) as s:
        answer = s.scalars(select(AnswerRow)).one()
        obj = s.scalars(select(ObjectRow)).one()
        assert (answer.check_name, answer.value_bool, answer.raw_text, answer.passed) == ("exit-blocked", True, RAW,
                                                                                          None)
        assert answer.lineage["prompt"] == "<image>\n<|grounding|>Is the exit blocked? Answer yes or no."
        assert (obj.answer_id, obj.analyzer, obj.label, obj.score) == (answer.id, "vl2-ask", "a pallet", 0.8)
        assert (obj.x1, obj.y1, obj.y2) == (0.0, 0.0, 48.0) and obj.x2 == pytest.approx(499 / 999 * 64)
        payload = s.scalars(select(OutboxEvent.payload).where(OutboxEvent.type == "job.succeeded")).one()["data"]
        assert [a["id"] for a in payload["answers"]] == [answer.id]
        assert [(o["label"], o["answer_id"]) for o in payload["results"]["objects"]] == [("a pallet", answer.id)]
        res = image_results(s, find_image(s, "yard/grounded.png"))
        assert [r["answer_id"] for r in res.rows["objects"]] == [answer.id]
        assert [a["check_name"] for a in res.answers] == ["exit-blocked"]
        drawn = render_annotated(_decode(data).image, list(res.rows.items()))
        assert drawn.getpixel((0, 20)) != (250, 250, 250)  # the box's left edge is drawn

        s.execute(update(Job).where(Job.id == reg.job_id).values(status="queued", lease_owner=None))
    commit(db_url, "w1", [_analysed(db_url, reg.job_id, data)])  # a re-run (attempt 2) replaces, never adds
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(AnswerRow)) == 1
        assert s.scalar(select(ObjectRow.answer_id)) == s.scalar(select(AnswerRow.id))
