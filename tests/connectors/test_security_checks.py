"""Security rules that name checks: a failed answer (``passed`` false) in a rule's window is a security event with
the check's severity, no zone and no box; unparsed and passed answers are not; the cool-down holds one per slot.
On real PostgreSQL and MariaDB."""

from __future__ import annotations

from datetime import time, timedelta
from typing import Optional

from sqlalchemy import select

from connectors.security import Rule, SecurityConnector, events
from services.storage import S3Store
from tests.connectors.test_security import T0, YARD, _clear, _payload, _rows, links, url  # noqa: F401 - fixtures


def _answer(check: str, passed: Optional[bool], status: str = "ok", severity: str = "high") -> dict:
    return {"id": 1, "check_name": check, "status": status, "passed": passed, "severity": severity,
            "confidence": 0.875, "value_bool": passed is False, "raw_text": "Yes."}


def _with_answers(image_id: int, minutes: float, answers: list[dict]) -> dict:
    p = _payload(image_id, minutes, [("person", 0.9, (10, 10, 50, 90))])
    p["data"]["answers"] = answers
    return p


def test_failed_checks_raise_events(url: str, links: S3Store) -> None:  # noqa: F811
    c = SecurityConnector("sec", url, YARD, [
        Rule("exit", [], [], checks=["fire-exit-clear"], windows=[(time(22, 0), time(6, 0))], cooldown_s=300),
        Rule("each", [], [], checks=["fire-exit-clear", "vest"]),  # no window, no cool-down
    ], timezone="Europe/Berlin", store=links, link_lifetime=timedelta(minutes=5))
    c.migrate()
    _clear(c)
    batch = [
        ("e1", _with_answers(1, 0, [_answer("fire-exit-clear", False), _answer("vest", True)])),
        ("e2", _with_answers(2, 2, [_answer("fire-exit-clear", False)])),  # same 5-minute slot: one event
        ("e3", _with_answers(3, 3, [_answer("fire-exit-clear", None, "unparsed"), _answer("vest", False, "ok", "low")])),
        ("e4", _with_answers(4, 60 * 9, [_answer("fire-exit-clear", False)])),  # 08:00 Berlin: only "each"
    ]
    assert c.apply(batch) == 6  # exit: e1, e2; each: e1, e3 (vest), e4, e2
    assert c.apply(list(reversed(batch))) == 6  # re-delivery in another order changes nothing
    with c.engine.connect() as conn:
        rows = conn.execute(select(events).order_by(events.c.rule, events.c.image_id)).mappings().all()
    slot = int(T0.timestamp()) // 300
    assert [(r["rule"], r["zone"], r["label"], r["image_id"], r["box"], r["severity"], r["dedupe_key"], r["score"])
            for r in rows] == [
        ("each", "", "fire-exit-clear", 1, "", "high", "fire-exit-clear|1|", 0.875),
        ("each", "", "fire-exit-clear", 2, "", "high", "fire-exit-clear|2|", 0.875),
        ("each", "", "vest", 3, "", "low", "vest|3|", 0.875),
        ("each", "", "fire-exit-clear", 4, "", "high", "fire-exit-clear|4|", 0.875),
        ("exit", "", "fire-exit-clear", 1, "", "high", f"fire-exit-clear|{slot}", 0.875),
    ]
    assert len(_rows(c)) == 5
    c.engine.dispose()

