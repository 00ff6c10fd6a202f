"""JSON columns: one encoder (``services.db.dump_json``) for SQLAlchemy's statements and ``write_rows``' COPY, on
PostgreSQL and on the embedded SQLite alike."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import select

from services.db import dump_json, get_engine, session_scope, write_rows
from services.events import event_row
from services.schema import OutboxEvent

# what analyzers hand over (numpy numbers, keys that are not strings, a score that is not a number) and what
# the column must hold
ODD = {"score": np.float32(0.5), "count": np.int64(3), "boxes": np.array([[1.5, 2.0]]), 7: "seven",
       "nan": float("nan"), "inf": float("inf"), "nested": {"t": (1, 2)}}
STORED = {"score": 0.5, "count": 3, "boxes": [[1.5, 2.0]], "7": "seven", "nan": None, "inf": None,
          "nested": {"t": [1, 2]}}


def test_dump_json_writes_what_json_reads():
    assert json.loads(dump_json(ODD)) == STORED
    assert json.loads(dump_json({"text": "Straße ✓ \u0000"})) == {"text": "Straße ✓ \u0000"}


@pytest.mark.parametrize("via", ["copy", "statement"])
@pytest.mark.parametrize("database", [pytest.param("postgresql", marks=pytest.mark.services), "sqlite"])
def test_json_columns_store_what_analyzers_hand_over(request, database, via):
    url = request.getfixturevalue("db_url" if database == "postgresql" else "sqlite_url")
    row = event_row("job.succeeded", None, ODD)
    if via == "copy":  # COPY on PostgreSQL, an executemany on SQLite
        with get_engine(url).begin() as conn:
            write_rows(conn, OutboxEvent.__table__, [row])
    else:
        with session_scope(url) as s:
            s.add(OutboxEvent(**row))
    with session_scope(url) as s:
        payload = s.scalars(select(OutboxEvent.payload).where(OutboxEvent.event_id == row["event_id"])).one()
    assert payload["data"] == STORED
