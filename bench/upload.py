"""``vlwatch upload`` against plain S3 PUTs of the same files with the same client and threads, in one run.

    .venv/bin/python bench/upload.py [--images 2000] [--rounds 5]

Plain: read each file and PUT it (``S3Store.put``, 8 threads). Project: ``services.ingest.upload.upload`` over the
same folder — read and hash, skip what is registered, PUT, register in PostgreSQL, send the Celery tasks to Redis
(no worker consumes them). Each round uploads under fresh prefixes; the sides alternate; prints images/s of each
and the ratio of the medians (goal >= 0.8). Starts the test stack (tests/stack.py) if it is not running.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from scratch import scratch  # noqa: E402

THREADS = 8


def make_images(folder: Path, n: int) -> list[Path]:
    """Small PNGs of distinct content (~1-3 KB each)."""
    import random

    from PIL import Image

    rng = random.Random(7)
    paths = []
    for i in range(n):
        im = Image.new("RGB", (48, 32), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        im.putpixel((i % 48, (i // 48) % 32), (255, 255, 255))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        p = folder / f"img-{i:05d}.png"
        p.write_bytes(buf.getvalue())
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from services.config import AppConfig, Profile, SourceConfig
    from services.ingest.upload import upload
    from services.settings import Settings
    from services.storage import store_from_settings
    from workers.app import make_app, sender_for

    with scratch() as run:
        st, db_url, bucket = run.stack, run.db_url, run.bucket
        settings = Settings(database_url=db_url, broker_url=st["VLWATCH_TEST_REDIS_URL"],
                            s3_endpoint=st["VLWATCH_TEST_S3_ENDPOINT"], s3_access_key=st["VLWATCH_TEST_S3_ACCESS_KEY"],
                            s3_secret_key=st["VLWATCH_TEST_S3_SECRET_KEY"], bucket=bucket)
        rounds = range(args.rounds)
        config = AppConfig(profiles={"codes": Profile(analyzers=("barcode",))},
                           sources={f"r{r}": SourceConfig(profile="codes", prefix=f"r{r}/") for r in rounds})
        store = store_from_settings(settings)
        store.put("setup/first-write", b"x")  # the bucket's first write allocates its volumes: not timed
        app = make_app(settings)
        with app.producer_pool.acquire(block=True) as producer:
            producer.connection.ensure_connection(max_retries=3)
        send = sender_for(app)
        folder = Path(tempfile.mkdtemp(prefix="vlwatch-bench-upload-"))
        files = make_images(folder, args.images)

        def plain(prefix: str) -> float:
            t = time.perf_counter()
            with ThreadPoolExecutor(THREADS) as pool:
                list(pool.map(lambda p: store.put(prefix + p.name, p.read_bytes(), content_type="image/png"), files))
            return len(files) / (time.perf_counter() - t)

        def project(source: str) -> float:
            t = time.perf_counter()
            report = upload(db_url, config, store, [folder], source, send)
            took = time.perf_counter() - t
            assert report.uploaded == len(files), report
            return len(files) / took

        plain_rates, project_rates = [], []
        for r in rounds:
            plain_rates.append(plain(f"plain{r}/"))
            project_rates.append(project(f"r{r}"))
            print(f"round {r}: plain PUTs {plain_rates[-1]:7.1f} img/s   vlwatch upload {project_rates[-1]:7.1f} img/s")
        p, q = statistics.median(plain_rates), statistics.median(project_rates)
        print(f"plain PUTs ({THREADS} threads): {p:.1f} images/s; vlwatch upload (+ register + send): {q:.1f} images/s")
        print(f"ratio upload / plain PUTs: {q / p:.2f}  (goal >= 0.8)")
        import redis

        redis.Redis.from_url(st["VLWATCH_TEST_REDIS_URL"]).delete("cpu")  # the unconsumed tasks


if __name__ == "__main__":
    main()
