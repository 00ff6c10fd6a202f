"""Image search on PostgreSQL at scale: 1,000,000 object rows (plus text lines and barcodes) loaded with COPY, then
every documented filter of ``GET /api/v1/images`` (``services.api.search.search_images``, the function the API
runs, summaries of the page included) timed over varied parameters; prints p50 and p95 per filter and the ratio
of each p95 to the unfiltered first page measured in the same run.

    python bench/search.py [--objects 1000000] [--images 200000] [--runs 40]

The server comes from VLWATCH_TEST_PG_URL, else the test stack is started (tests/stack.py). A fresh database
``vlwatch_bench_search`` is made, migrated (Alembic: the indexes of migration 0004 included) and dropped at the end.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from services.api.search import Search, search_images  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
DAYS = 60
SOURCES = 20
# Labels by frequency: a few common ones, a long tail (weights roughly Zipf).
LABELS = ["pallet", "box", "person", "forklift", "shelf", "cart", "ladder", "helmet", "vest", "door", "truck",
          "spill", "fire-extinguisher", "barrier", "cone", "drum", "crate", "bag", "trolley", "sign",
          "camera", "dog", "bicycle", "hose", "tyre", "smoke", "knife", "broken-glass", "toolbox", "scanner"]
WEIGHTS = [1 / (k + 1) ** 1.1 for k in range(len(LABELS))]


def fresh(server: str) -> str:
    url = make_url(server)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text("DROP DATABASE IF EXISTS vlwatch_bench_search WITH (FORCE)"))
        c.execute(text("CREATE DATABASE vlwatch_bench_search"))
    admin.dispose()
    return url.set(database="vlwatch_bench_search").render_as_string(hide_password=False)


def drop(server: str) -> None:
    admin = create_engine(make_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text("DROP DATABASE IF EXISTS vlwatch_bench_search WITH (FORCE)"))
    admin.dispose()


def copy(cur, table: str, columns: str, rows: Callable[[io.StringIO], None]) -> None:  # noqa: ANN001
    buf = io.StringIO()
    rows(buf)
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as cp:
        cp.write(buf.getvalue())


def load(url: str, n_images: int, n_objects: int, rng: random.Random) -> dict[str, float]:
    """Rows as a busy site would have them, by COPY; returns seconds per table."""
    import psycopg

    u = make_url(url)
    took: dict[str, float] = {}
    stamp = T0.isoformat()
    with psycopg.connect(host=u.host, port=u.port, user=u.username, dbname=u.database, autocommit=True) as conn:
        cur = conn.cursor()

        def timed(table: str, columns: str, rows: Callable[[io.StringIO], None]) -> None:
            t = time.perf_counter()
            copy(cur, table, columns, rows)
            took[table] = time.perf_counter() - t

        timed("sources", "id, name, profile, prefix, created_at", lambda b: [
            b.write(f"{s}\tcam-{s}\tdock\tcam-{s}/\t{stamp}\n") for s in range(1, SOURCES + 1)])

        def images(b: io.StringIO) -> None:
            for i in range(1, n_images + 1):
                seen = T0 + timedelta(seconds=DAYS * 86400 * i / n_images)
                captured = seen.isoformat() if i % 3 else "\\N"  # a third of the cameras write no EXIF time
                b.write(f"{i}\t{i % SOURCES + 1}\tsite\tcam-{i % SOURCES + 1}/{i}.jpg\t{i:032x}\t250000\timage/jpeg\t"
                        f"1920\t1080\t{captured}\t{seen.isoformat()}\t{seen.isoformat()}\n")

        timed("images", "id, source_id, bucket, key, etag, size, content_type, width, height, captured_at, "
                        "uploaded_at, registered_at", images)

        def jobs(b: io.StringIO) -> None:
            for i in range(1, n_images + 1):
                failed = rng.random() < 0.02
                status, error = ("failed", "bad image: truncated") if failed else ("succeeded", "\\N")
                b.write(f"{i}\t{i}\tdock\tgpu\t{status}\t1\t{error}\t{stamp}\n")

        timed("jobs", "id, image_id, profile, queue, status, attempts, error, queued_at", jobs)

        def objects(b: io.StringIO) -> None:
            labels = rng.choices(LABELS, WEIGHTS, k=n_objects)
            for k in range(n_objects):
                i = rng.randrange(1, n_images + 1)
                x, y = rng.uniform(0, 1800), rng.uniform(0, 1000)
                b.write(f"{i}\t{i}\tvl2-ground\t{x:.1f}\t{y:.1f}\t{x + 80:.1f}\t{y + 60:.1f}\t{rng.random():.3f}\t"
                        f"{stamp}\t{labels[k]}\t{labels[k]}\n")

        timed("objects", "job_id, image_id, analyzer, x1, y1, x2, y2, score, created_at, label, phrase", objects)

        def text_lines(b: io.StringIO) -> None:
            for _ in range(n_objects // 4):
                i = rng.randrange(1, n_images + 1)
                b.write(f"{i}\t{i}\tvl2-ocr\t10\t10\t300\t40\t{rng.random():.3f}\t{stamp}\t"
                        f"SKU WH-{rng.randrange(100000):05d} Aisle {rng.randrange(40)} Bay {rng.randrange(60)}\n")

        timed("text_lines", "job_id, image_id, analyzer, x1, y1, x2, y2, score, created_at, text", text_lines)

        def barcodes(b: io.StringIO) -> None:
            for _ in range(n_objects // 5):
                i = rng.randrange(1, n_images + 1)
                b.write(f"{i}\t{i}\tbarcode\t10\t50\t300\t120\t{stamp}\tCode128\tWH-{rng.randrange(100000):05d}\n")

        timed("barcodes", "job_id, image_id, analyzer, x1, y1, x2, y2, created_at, format, value", barcodes)
        t = time.perf_counter()
        cur.execute("ANALYZE")
        took["analyze"] = time.perf_counter() - t
    return took


def filters(rng: random.Random) -> dict[str, Callable[[], Search]]:
    """The documented filters, each with parameters drawn per run."""
    def day() -> tuple[datetime, datetime]:
        start = T0 + timedelta(days=rng.uniform(0, DAYS - 1))
        return start, start + timedelta(days=1)

    def common() -> str:
        return rng.choice(LABELS[:5])

    def rare() -> str:
        return rng.choice(LABELS[-10:])

    return {
        "newest (no filter)": lambda: Search(),
        "source": lambda: Search(source=f"cam-{rng.randrange(1, SOURCES + 1)}"),
        "time range (1 day)": lambda: Search(since=day()[0], until=day()[0] + timedelta(days=1)),
        "source + time range": lambda: Search(source=f"cam-{rng.randrange(1, SOURCES + 1)}",
                                              since=(d := day())[0], until=d[1]),
        "label (common)": lambda: Search(label=common()),
        "label (rare)": lambda: Search(label=rare()),
        "label + min_score 0.9": lambda: Search(label=rare(), min_score=0.9),
        "min_score 0.99 alone": lambda: Search(min_score=0.99),
        "barcode value": lambda: Search(barcode=f"WH-{rng.randrange(100000):05d}"),
        "text contains": lambda: Search(text=f"wh-{rng.randrange(100000):05d}"),
        "job status failed": lambda: Search(status="failed"),
        "source + label + time": lambda: Search(source=f"cam-{rng.randrange(1, SOURCES + 1)}", label=common(),
                                                since=(d := day())[0], until=d[1]),
        "page 20 (keyset)": lambda: Search(before_id=None),  # replaced by a cursor below
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=1_000_000)
    ap.add_argument("--images", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--keep", action="store_true", help="Keep the database (to EXPLAIN the queries).")
    a = ap.parse_args()
    env = dict(os.environ)
    if "VLWATCH_TEST_PG_URL" not in env:
        from tests import stack
        env.update(stack.up(["postgres"]))
    server = env["VLWATCH_TEST_PG_URL"]
    url = fresh(server)
    try:
        from services.migrate import upgrade

        upgrade(url)
        rng = random.Random(7)
        t = time.perf_counter()
        took = load(url, a.images, a.objects, rng)
        print(f"loaded {a.images} images, {a.objects} objects, {a.objects // 4} text lines, {a.objects // 5} barcodes "
              f"by COPY in {time.perf_counter() - t:.1f}s ("
              + ", ".join(f"{k} {v:.1f}s" for k, v in took.items()) + ")")
        engine = create_engine(url)
        results: dict[str, list[float]] = {}
        with engine.connect() as conn:
            cursor_20 = None
            q = Search()
            for _ in range(20):  # the cursor of page 20 (50 a page)
                _, cursor_20 = search_images(conn, Search(before_id=cursor_20), None)
            for name, make in filters(rng).items():
                times = []
                for run in range(a.runs + 3):
                    q = make() if name != "page 20 (keyset)" else Search(before_id=cursor_20 - rng.randrange(5000))
                    t = time.perf_counter()
                    items, _ = search_images(conn, q, None)
                    if run >= 3:  # the first runs warm the caches
                        times.append(time.perf_counter() - t)
                results[name] = times
        engine.dispose()
        base = statistics.quantiles(results["newest (no filter)"], n=20)[18]
        print(f"{'filter':<24} {'p50 ms':>8} {'p95 ms':>8} {'p95/base':>9}   ({a.runs} runs each, 50 a page)")
        worst = 0.0
        for name, times in results.items():
            p50, p95 = statistics.median(times), statistics.quantiles(times, n=20)[18]
            worst = max(worst, p95)
            print(f"{name:<24} {1000 * p50:8.1f} {1000 * p95:8.1f} {p95 / base:8.1f}x")
        print(f"worst p95 {1000 * worst:.1f} ms ({'under' if worst < 0.3 else 'OVER'} the 300 ms goal)")
    finally:
        from services.db import dispose_all

        dispose_all()
        if not a.keep:
            drop(server)


if __name__ == "__main__":
    main()
