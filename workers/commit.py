"""Committing a batch of analysed jobs: for every job still leased to this worker, in one transaction, its result
rows (replacing those of an earlier attempt), its answers to checks (with the boxes of grounded answers linked by
``objects.answer_id``), the image's facts, the job's final status with timings and lineage, its ``job.succeeded``
/ ``job.failed`` outbox event and a ``check.failed`` event per answer whose expectation did not hold. Nothing is
announced that is not committed, and a job whose lease was taken over writes nothing ("lost": the other worker's
run counts). What needs no database (result rows as payload and as table rows, answers, lineage) is
made before the transaction opens, so the jobs' row locks are held for the writes only.

Capture time: stored in UTC. EXIF's own offset (OffsetTimeOriginal) wins; a camera that wrote none is read in its
source's configured time zone (``sources.NAME.timezone``), else UTC (``model.decode.CaptureTime.in_utc``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import timezone, tzinfo
from typing import Any, Callable, Optional

from sqlalchemy import delete, insert, select, update

from services.db import session_scope, write_rows
from services.events import CHECK_FAILED, JOB_FAILED, JOB_SUCCEEDED, PAYLOAD_VERSION, event_row, iso
from services.schema import RESULT_TABLES, AnswerRow, Image, Job, JobStatus, OutboxEvent, Source, utcnow
from workers.work import Outcome, Work

log = logging.getLogger(__name__)


@dataclass
class _Answer:
    """One answer on its way to the table: its row, its payload entry and its grounded boxes (table rows and
    payload rows), which get the answer's id once it is inserted."""

    row: dict[str, Any]
    payload: dict[str, Any]
    objects: list[tuple[dict[str, Any], dict[str, Any]]]


@dataclass
class _Prepared:
    """What a job's commit needs that the database does not give, made before the transaction opens."""

    work: Work
    timings: dict[str, float]
    # for a job that succeeded: its result rows by kind (the payload's ``results``, boxes of grounded answers
    # included), the same rows with ``job_id`` and ``image_id`` for the tables, its answers and its lineage
    found: dict[str, list[dict[str, Any]]]
    rows: dict[str, list[dict[str, Any]]]
    answers: list[_Answer]
    lineage: Optional[list[dict[str, Any]]]


def _utc_zone(source: Optional[str]) -> tzinfo:
    return timezone.utc


def commit(db_url: str, owner: str, work: list[Work],
           source_zone: Callable[[Optional[str]], tzinfo] = _utc_zone) -> list[Outcome]:
    """Write the outcome of every job of ``work`` still leased to ``owner``; see the module's text.
    ``source_zone(source name)`` is the zone of a source's camera clock (``AppConfig.source_zone``)."""
    outcomes: list[Outcome] = []
    prepared = [_prepare(w) for w in work]
    with session_scope(db_url) as s:
        jobs = {r.id: r for r in s.execute(
            select(Job.id, Job.status, Job.lease_owner, Job.profile, Job.attempts, Image.id.label("image_id"),
                   Image.bucket, Image.key, Image.etag, Image.sha256, Image.uploaded_at,
                   Source.name.label("source"))
            .join(Image, Image.id == Job.image_id).outerjoin(Source, Source.id == Image.source_id)
            .where(Job.id.in_([w.job_id for w in work])).with_for_update(of=Job))}
        mine = []
        for p in prepared:
            job = jobs[p.work.job_id]
            if job.status == JobStatus.running.value and job.lease_owner == owner:
                mine.append(p)
            else:
                log.warning("job %s: lease lost to %s; results discarded", job.id, job.lease_owner)
                outcomes.append(Outcome(job.id, "lost"))
        if not mine:
            return outcomes
        # A job's first attempt has no results (they are only written under a claim, and a claim counts an
        # attempt): only re-runs delete, so a re-run replaces its rows and never duplicates them.
        rerun = [p.work.job_id for p in mine if jobs[p.work.job_id].attempts > 1]
        for table in [*RESULT_TABLES.values(), AnswerRow] if rerun else ():  # objects first: they name answers
            s.execute(delete(table).where(table.job_id.in_(rerun)))
        results: dict[str, list[dict[str, Any]]] = defaultdict(list)
        job_rows, image_rows, events, answers, checks_failed = [], [], [], [], []
        now = utcnow()
        for p in mine:
            w, job = p.work, jobs[p.work.job_id]
            image_row: dict[str, Any] = {"id": job.image_id, "sha256": w.sha256 or job.sha256}
            image = {"id": job.image_id, "bucket": job.bucket, "key": job.key, "etag": job.etag,
                     "source": job.source, "width": None, "height": None, "sha256": image_row["sha256"],
                     "captured_at": None, "uploaded_at": iso(job.uploaded_at)}
            job_row: dict[str, Any] = {"id": job.id, "lease_owner": None, "lease_expires_at": None,
                                       "finished_at": now, "timings": p.timings}
            job_data = {"id": job.id, "profile": job.profile, "attempts": job.attempts}
            if w.failure is not None:
                log.warning("job %s failed: %s", w.job_id, w.failure)
                job_row.update(status=JobStatus.failed.value, error=w.failure, lineage=None)
                events.append(event_row(JOB_FAILED, job.id, {
                    "version": PAYLOAD_VERSION, "image": image, "job": job_data | {"error": w.failure}}))
                outcomes.append(Outcome(w.job_id, "failed", w.failure))
            else:
                d = w.decoded
                captured = d.capture_time.in_utc(source_zone(job.source)) if d.capture_time else None
                image_row.update(width=d.width, height=d.height, captured_at=captured)
                image.update(width=d.width, height=d.height, captured_at=iso(captured))
                for kind, rows in p.rows.items():
                    results[kind] += rows
                answers += p.answers
                about = {"image": image, "job": {"id": job.id, "profile": job.profile}}
                checks_failed += [(a, about) for a in p.answers if a.row["passed"] is False]
                job_row.update(status=JobStatus.succeeded.value, error=None, lineage=p.lineage)
                events.append(event_row(JOB_SUCCEEDED, job.id, {
                    "version": PAYLOAD_VERSION, "image": image, "results": p.found,
                    "answers": [a.payload for a in p.answers],
                    "job": job_data | {"timings": p.timings, "lineage": p.lineage, "notes": list(d.notes)}}))
                outcomes.append(Outcome(w.job_id, "succeeded"))
            job_rows.append(job_row)
            image_rows.append(image_row)
        if answers:
            ids = s.scalars(insert(AnswerRow).returning(AnswerRow.id, sort_by_parameter_order=True),
                            [a.row for a in answers]).all()
            for answer_id, a in zip(ids, answers):
                a.payload["id"] = answer_id
                for table_row, payload_row in a.objects:
                    table_row["answer_id"] = payload_row["answer_id"] = answer_id
            for a, about in checks_failed:
                events.append(event_row(CHECK_FAILED, a.row["job_id"], {
                    "version": PAYLOAD_VERSION, **about, "answer": a.payload}))
        conn = s.connection()
        for kind, rows in results.items():
            write_rows(conn, RESULT_TABLES[kind].__table__, rows)
        # UPDATEs by primary key, as an executemany: psycopg sends them as one pipeline, a round trip in all
        s.execute(update(Image), image_rows)
        s.execute(update(Job), job_rows)
        write_rows(conn, OutboxEvent.__table__, events)
    by_status: dict[str, list[int]] = defaultdict(list)
    for o in outcomes:
        by_status[o.status].append(o.job_id)
    for status, job_ids in by_status.items():
        log.info("jobs %s %s", job_ids, status)
    return outcomes


def _prepare(w: Work) -> _Prepared:
    """A job's :class:`_Prepared`; a failed job's has its timings only."""
    timings = {k: round(v, 6) for k, v in w.timings.items()}
    if w.failure is not None:
        return _Prepared(w, timings, {}, {}, [], None)
    found = _result_rows(w)
    rows = {kind: [{"job_id": w.job_id, "image_id": w.image_id} | r for r in kind_rows]
            for kind, kind_rows in found.items()}
    answers = _answers(w)
    for a in answers:
        found["objects"] += [payload_row for _, payload_row in a.objects]
        rows["objects"] += [table_row for table_row, _ in a.objects]
    return _Prepared(w, timings, found, rows, answers, [_lineage(r, w) for r in w.results])


def _result_rows(w: Work) -> dict[str, list[dict[str, Any]]]:
    """The job's result rows by kind, as its payload lists them (``job_id`` and ``image_id`` are added for the
    tables)."""
    found: dict[str, list[dict[str, Any]]] = {kind: [] for kind in RESULT_TABLES}
    for result in w.results:
        kind, extra = result.detections.kind, {"analyzer": result.lineage.analyzer}
        extra |= {"answer_id": None} if kind == "objects" else {}
        found[kind].extend(extra | r for r in result.detections.to_rows())
    return found


def _paired(w: Work, answer: Any) -> Optional[int]:
    """The id of the previous image an answer's prompt showed, if any."""
    return w.previous.image_id if answer.paired and w.previous is not None else None


def _lineage(result: Any, w: Work) -> dict[str, Any]:
    """A result's lineage for the job row; ``paired_image`` names the previous image its prompts showed."""
    out = result.lineage.as_dict()
    if any(_paired(w, a) for a in result.answers):
        out["paired_image"] = {"id": w.previous.image_id, "key": w.previous.key}
    return out


def _answers(w: Work) -> list[_Answer]:
    """Rows, payload entries and grounded boxes of the job's answers to checks (``model.vl2.ask.CheckAnswer``)."""
    out = []
    for result in w.results:
        for a in result.answers:
            analyzer, paired = result.lineage.analyzer, _paired(w, a)
            lineage = result.lineage.as_dict() | {"prompt": a.check.prompt, "paired_image_id": paired}
            row = {"job_id": w.job_id, "image_id": w.image_id, "analyzer": analyzer, **a.to_row(),
                   "paired_image_id": paired, "lineage": lineage}
            payload = {k: v for k, v in row.items() if k not in ("job_id", "image_id", "lineage")}
            boxes = a.detections.to_rows() if a.detections is not None else []
            objects = [({"job_id": w.job_id, "image_id": w.image_id, "analyzer": analyzer} | r,
                        {"analyzer": analyzer, "answer_id": None} | r) for r in boxes]
            out.append(_Answer(row, payload, objects))
    return out
