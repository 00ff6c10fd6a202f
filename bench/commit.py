"""Committing a batch of results against PostgreSQL ``COPY`` of the same rows into the same tables, in one run.

    .venv/bin/python bench/commit.py [--jobs 64] [--rows 44] [--rounds 5]

Project: ``workers.commit.commit`` of ``--jobs`` claimed jobs, each with ``--rows`` result rows (a quarter
objects, half text lines, a quarter barcodes) — result rows, image facts, job status and the outbox event, in
one transaction. Baseline: ``COPY`` of the same result rows (converted from the same detections on the clock)
and of the same outbox rows (the events an untimed first commit wrote, their payloads already serialised) into
the same tables in one transaction. Between rounds the jobs are claimed again and the rows removed. The sides
alternate; prints rows/s of each and the ratio of the medians (goal >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from scratch import scratch  # noqa: E402

OWNER = "bench-worker"


def make_work(claimed, rows: int) -> list:  # noqa: ANN001
    """Work as the pipeline leaves it: decoded facts and one result per kind."""
    from PIL import Image

    from model.analyzers import AnalyzerResult, Lineage
    from model.decode import DecodedImage
    from model.detections import Detections
    from workers.work import Work

    size = (1920, 1080)
    n_obj, n_bar = rows // 4, rows // 4
    n_txt = rows - n_obj - n_bar
    box = [[10.0 + i, 20.0, 200.0 + i, 300.0] for i in range(max(n_obj, n_txt, n_bar))]
    results = [
        AnalyzerResult(Detections.from_grid_boxes(size, ["pallet"] * n_obj, [[10, 20, 500, 600]] * n_obj,
                                                  scores=[0.9] * n_obj, data={"phrase": ["pallet"] * n_obj}),
                       Lineage("vl2-ground", "deepseek-vl2", "1", "tiny", "sha256:0", "<|ref|>pallet<|/ref|>")),
        AnalyzerResult(Detections.from_text_lines(size, [f"SKU WH-{i:05d}" for i in range(n_txt)], box[:n_txt],
                                                  [0.95] * n_txt), Lineage("ocr", "rapidocr", "3")),
        AnalyzerResult(Detections.from_barcodes(size, ["Code128"] * n_bar, [f"WH-{i:05d}" for i in range(n_bar)],
                                                box[:n_bar]), Lineage("barcode", "zxing-cpp", "2")),
    ]
    image = Image.new("RGB", (8, 8))
    out = []
    for c in claimed:
        w = Work.of(c)
        w.sha256 = "0" * 64  # fetch took it
        w.decoded = DecodedImage(image, size[0], size[1], "JPEG", None, 1, [])
        w.results = list(results)
        w.timings = {"fetch": 0.01, "decode": 0.02, "ocr": 0.3}
        out.append(w)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=64)
    ap.add_argument("--rows", type=int, default=44)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    with scratch() as run:
        measure(args, run.db_url)


def measure(args: argparse.Namespace, db_url: str) -> None:
    from sqlalchemy import delete, text, update

    from services.db import get_engine, session_scope
    from services.schema import RESULT_TABLES, Image, Job, OutboxEvent, utcnow
    from workers.commit import commit
    from workers.lease import claim

    with session_scope(db_url) as s:
        now = utcnow()
        ids = []
        for i in range(args.jobs):
            im = Image(bucket="b", key=f"k/{i}.jpg", etag=f"e{i}", size=50_000, registered_at=now)
            s.add(im)
            s.flush()
            job = Job(image_id=im.id, profile="p", queue="gpu", status="queued", attempts=0, queued_at=now)
            s.add(job)
            s.flush()
            ids.append(job.id)

    def reset() -> list:
        with session_scope(db_url) as s:
            for table in [*RESULT_TABLES.values(), OutboxEvent]:
                s.execute(delete(table))
            s.execute(update(Job).values(status="queued", lease_owner=None, attempts=0))
        return make_work(claim(db_url, OWNER, 600, ids), args.rows)

    columns = {kind: [c.name for c in t.__table__.columns if c.name != "id"] for kind, t in RESULT_TABLES.items()}
    commit(db_url, OWNER, reset())  # untimed: its outbox rows are the ones the baseline copies
    with session_scope(db_url) as s:
        events = [list(row) for row in s.execute(text(
            "SELECT event_id, type, job_id, payload::text, created_at FROM outbox_events ORDER BY id"))]

    def copy_same_rows(work: list) -> None:
        """One COPY per table, the rows already converted: the floor for writing them."""
        now = utcnow()
        by_table: dict[str, list[list]] = {kind: [] for kind in RESULT_TABLES}
        for w in work:
            for r in w.results:
                kind = r.detections.kind
                for row in r.detections.to_rows():
                    full = {"job_id": w.job_id, "image_id": w.image_id, "analyzer": r.lineage.analyzer,
                            "created_at": now} | row
                    if full.get("attributes") is not None:
                        full["attributes"] = json.dumps(full["attributes"])
                    by_table[kind].append([full.get(c) for c in columns[kind]])
        raw = get_engine(db_url).raw_connection()
        try:
            with raw.cursor() as cur:
                for kind, rows in by_table.items():
                    with cur.copy(f"COPY {kind} ({', '.join(columns[kind])}) FROM STDIN") as cp:
                        for row in rows:
                            cp.write_row(row)
                with cur.copy("COPY outbox_events (event_id, type, job_id, payload, created_at) FROM STDIN") as cp:
                    for row in events:
                        cp.write_row(row)
            raw.commit()
        finally:
            raw.close()

    n_rows = args.jobs * args.rows
    mine, base = [], []
    for r in range(args.rounds):
        work = reset()
        t = time.perf_counter()
        copy_same_rows(work)
        base.append(n_rows / (time.perf_counter() - t))
        work = reset()
        t = time.perf_counter()
        outcomes = commit(db_url, OWNER, work)
        mine.append(n_rows / (time.perf_counter() - t))
        assert [o.status for o in outcomes] == ["succeeded"] * args.jobs, outcomes[:3]
        print(f"round {r}: COPY {base[-1]:9.0f} rows/s   commit {mine[-1]:9.0f} rows/s")
    b, m = statistics.median(base), statistics.median(mine)
    print(f"{args.jobs} jobs x {args.rows} rows: COPY {b:.0f} rows/s; commit (+ job status, images, outbox) "
          f"{m:.0f} rows/s")
    print(f"ratio commit / COPY: {m / b:.2f}  (goal >= 0.8)")


if __name__ == "__main__":
    main()
