"""The events vlwatch announces: versioned ``job.*`` payloads and the outbox row that carries them.

An event is written in the same transaction as the state it announces (the outbox), and the dispatcher fans it
out to webhook subscribers and connectors. Payloads are a stable external shape: fields are added, never renamed,
without a new ``version``.

``version`` 2 (current): ``results`` is keyed by result kind as in ``model.detections.KINDS`` (``objects``,
``text_lines``, ``barcodes``), each row named as its table's columns. Version 1 called ``text_lines`` ``text``;
:func:`results_of` reads both, so events stored before an upgrade are still delivered correctly.
``job.succeeded`` also carries ``answers`` (rows of the ``answers`` table, ``id`` included; empty without checks).

``check.failed``: one per answer whose expectation did not hold (``passed`` false; unparsed answers are not
failures), written with the job's results: ``{"version", "image", "job": {"id", "profile"}, "answer"}``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Optional

from services.schema import utcnow

PAYLOAD_VERSION = 2

JOB_SUCCEEDED = "job.succeeded"
JOB_FAILED = "job.failed"
CHECK_FAILED = "check.failed"
EVENT_TYPES = (JOB_SUCCEEDED, JOB_FAILED, CHECK_FAILED)


def iso(t: Optional[datetime]) -> Optional[str]:
    """``2026-12-01T17:00:00Z``: UTC with a Z, as every payload writes times."""
    return t.isoformat().replace("+00:00", "Z") if t is not None else None


def event_row(type_: str, job_id: Optional[int], data: dict[str, Any]) -> dict[str, Any]:
    """Column values of a new ``outbox_events`` row; ``payload`` is the envelope subscribers receive, and
    ``event_id`` its ``webhook-id`` (the same on every retry and replay)."""
    now = utcnow()
    return {"event_id": f"msg_{uuid.uuid4().hex}", "type": type_, "job_id": job_id, "created_at": now,
            "payload": {"type": type_, "timestamp": iso(now), "data": data}}


def results_of(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """A ``job.succeeded`` payload's result rows by kind, whichever payload version wrote them."""
    results = dict(data.get("results") or {})
    if "text" in results and "text_lines" not in results:  # version 1
        results["text_lines"] = results.pop("text")
    return {kind: list(results.get(kind) or []) for kind in ("objects", "text_lines", "barcodes")}
