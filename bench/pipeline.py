"""Pipeline throughput against the bare engine, measured in the same run.

    .venv/bin/python bench/pipeline.py [--images 300] [--workers 2] [--batch 16]

Pipeline: upload to SeaweedFS -> register in PostgreSQL -> Celery over Redis -> worker processes (barcode
engine) -> results committed -> outbox -> signed webhook verified by a local receiver; images/s from the first
upload to the last verified webhook. Bare engine: the same images, decode + barcode in a loop in one process.
Prints both and pipeline / bare (goal >= 0.5); the bare engine runs before and after the pipeline and counts as the
mean of the two. Starts the test stack (tests/stack.py) if it is not running.

One-time set-up happens before the clock starts: the workers report ready (and have warmed up), the dispatcher
has started and idles, the uploader has its S3 client and broker connection, and the new bucket has had its
first write (SeaweedFS allocates a new bucket's volumes then: 0.2-1 s that no later upload pays).
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from scratch import scratch  # noqa: E402


def make_labels(n: int) -> list[bytes]:
    """Small shelf labels: a Code128 of the SKU and a QR code, as PNG bytes."""
    import barcode
    import segno
    from barcode.writer import ImageWriter
    from PIL import Image, ImageDraw

    out = []
    for i in range(n):
        sku = f"WH-{10000 + i}"
        label = Image.new("RGB", (520, 200), "white")
        code = barcode.get("code128", sku, writer=ImageWriter()).render(
            {"module_width": 0.3, "module_height": 8.0, "quiet_zone": 2.0, "write_text": False, "dpi": 150})
        label.paste(code.convert("RGB").resize((300, 90)), (10, 40))
        qr = segno.make(f"https://wh.example/sku/{sku}", error="m")
        buf = io.BytesIO()
        qr.save(buf, kind="png", scale=3, border=2)
        label.paste(Image.open(buf).convert("RGB"), (340, 20))
        ImageDraw.Draw(label).text((10, 150), f"SKU {sku}", fill="black")
        b = io.BytesIO()
        label.save(b, format="PNG")
        out.append(b.getvalue())
    return out


def cpu_by_component(roles: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each part: our processes by role, and the servers by name (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}

    def cpu_of(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / tick

    for role, pids in roles.items():
        out[role] = sum(cpu_of(p) for p in pids)
    out["bench (upload)"] = cpu_of(os.getpid())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        for name in ("postgres", "redis-server", "weed"):
            if name in cmd:
                out[name] = out.get(name, 0.0) + cpu_of(int(proc.name))
    return out


def wait_idle(pid: int, tmp: Path, window: float = 0.3, busy: float = 0.25, limit: float = 60.0) -> None:
    """Until process ``pid`` uses less than ``busy`` of a core over ``window`` seconds (it polls when idle)."""
    deadline = time.monotonic() + limit
    last = cpu_by_component({"p": [pid]})["p"]
    while time.monotonic() < deadline:
        time.sleep(window)
        now = cpu_by_component({"p": [pid]})["p"]
        if now - last < busy * window:
            return
        last = now
    raise SystemExit(f"process {pid} did not settle within {limit:.0f} s; logs in {tmp}")


def bare_engine(images: list[bytes]) -> tuple[float, int, float]:
    """images/s, barcodes found, CPU ms per image."""
    from model.engines.barcode import BarcodeAnalyzer
    from model.decode import decode_image

    engine = BarcodeAnalyzer()
    engine.analyze([decode_image(images[0], max_bytes=1 << 26, max_pixels=1 << 26).image])  # warm
    found = 0
    t, c = time.perf_counter(), time.process_time()
    for data in images:
        (res,) = engine.analyze([decode_image(data, max_bytes=1 << 26, max_pixels=1 << 26).image])
        found += len(res.detections)
    return len(images) / (time.perf_counter() - t), found, (time.process_time() - c) * 1000 / len(images)


def pipeline(images: list[bytes], workers: int, batch: int) -> tuple[float, dict]:
    """images/s from the first upload to the last verified webhook, and what it cost (in a scratch database and
    bucket)."""
    with scratch() as run:
        return _pipeline(images, workers, batch, run.stack, run.db_url, run.bucket)


def _pipeline(images: list[bytes], workers: int, batch: int, st: dict[str, str], db_url: str,
              bucket: str) -> tuple[float, dict]:
    from sqlalchemy import func, select

    from connectors.webhooks import add_subscription
    from services.config import AppConfig, Profile, SourceConfig
    from services.db import get_engine, session_scope
    from services.ingest.upload import upload
    from services.schema import WebhookDelivery
    from services.settings import load_settings
    from services.storage import store_from_settings
    from workers.app import make_app, sender_for

    procs: list[subprocess.Popen] = []
    try:
        tmp = Path(tempfile.mkdtemp(prefix="vlwatch-bench-"))
        (tmp / "vlwatch.yaml").write_text("profiles: {codes: {analyzers: [barcode]}}\n"
                                          "sources: {bench: {prefix: 'bench/', profile: codes}}\n")
        env = {**os.environ, "VLWATCH_DATABASE_URL": db_url, "VLWATCH_BROKER_URL": st["VLWATCH_TEST_REDIS_URL"],
               "VLWATCH_S3_ENDPOINT": st["VLWATCH_TEST_S3_ENDPOINT"],
               "VLWATCH_S3_ACCESS_KEY": st["VLWATCH_TEST_S3_ACCESS_KEY"],
               "VLWATCH_S3_SECRET_KEY": st["VLWATCH_TEST_S3_SECRET_KEY"], "VLWATCH_BUCKET": bucket,
               "VLWATCH_CONFIG": str(tmp / "vlwatch.yaml"), "VLWATCH_BATCH_SIZE": str(batch),
               "VLWATCH_OUTBOUND_ALLOW": "127.0.0.1/32"}  # the receiver is on loopback
        settings = load_settings(env)
        config = AppConfig(profiles={"codes": Profile(analyzers=("barcode",))},
                           sources={"bench": SourceConfig(profile="codes", prefix="bench/")})
        folder = tmp / "in"
        folder.mkdir()
        for i, data in enumerate(images):
            (folder / f"label-{i:05d}.png").write_bytes(data)

        for i in range(workers):
            log = open(tmp / f"worker-{i}.log", "w")  # noqa: SIM115
            procs.append(subprocess.Popen([sys.executable, "-m", "services", "worker", "-Q", "cpu", "--pool", "solo"],
                                          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        deadline = time.monotonic() + 60
        while sum(" ready." in p.read_text() for p in tmp.glob("worker-*.log")) < workers:
            if time.monotonic() > deadline:
                raise SystemExit(f"workers did not start; logs in {tmp}")
            time.sleep(0.1)
        # The subscriber and the dispatcher run as their own processes, as they would in production.
        rx = subprocess.Popen([sys.executable, "-m", "services.cli.receiver"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
        rx_url, rx_secret = rx.stdout.readline().split()
        procs.append(rx)
        with session_scope(db_url) as s:
            add_subscription(s, "bench", rx_url, ["job.succeeded", "job.failed"], rx_secret)
        denv = {**env, "VLWATCH_DISPATCH_INTERVAL_SECONDS": "0.05", "VLWATCH_WEBHOOK_RETRY_SCHEDULE": "0.5,1,2"}
        procs.append(subprocess.Popen([sys.executable, "-m", "services", "dispatch", "--watch"], cwd=ROOT, env=denv,
                                      stdout=open(tmp / "dispatch.log", "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                      start_new_session=True))

        # Like the workers' " ready.", wait until the dispatcher has started (imports, first rounds: ~1.3 s of CPU)
        # and idles, so its start-up is not counted as per-image work nor competes with the measured run.
        wait_idle(procs[-1].pid, tmp)

        # The clock's poll (every 20 ms) on one connection: a session per poll cost ~1 ms of CPU, 5 % of a core.
        poll = get_engine(db_url).connect()
        count_delivered = select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.status == "delivered")

        def delivered() -> int:
            n = poll.execute(count_delivered).scalar_one()
            poll.rollback()
            return n

        # One-time set-up outside the clock, as the workers' and the dispatcher's start-up: the uploader's S3 client
        # and Celery producer connection, and the bucket's first write (SeaweedFS allocates the volumes of a new
        # bucket's collection on its first write: 0.2-1 s that no later upload pays).
        store = store_from_settings(settings)
        store.put("bench-setup/first-write", os.urandom(1024), content_type="application/octet-stream")
        store.delete("bench-setup/first-write")
        app = make_app(settings)
        with app.producer_pool.acquire(block=True) as producer:
            producer.connection.ensure_connection(max_retries=3)
        roles = {"worker": [p.pid for p in procs[:workers]], "receiver": [rx.pid], "dispatcher": [procs[-1].pid]}
        gc.collect()  # start the clock on a collected heap (the set-up left garbage and uncollected survivors)
        cpu0 = cpu_by_component(roles)
        t0 = time.perf_counter()
        upload(db_url, config, store, [folder], "bench", sender_for(app))
        t_up = time.perf_counter() - t0
        while delivered() < len(images):
            if time.perf_counter() - t0 > 600:
                raise SystemExit(f"only {delivered()} of {len(images)} webhooks delivered in 600 s; logs in {tmp}")
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        cpu1 = cpu_by_component(roles)
        cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
        poll.close()
        return len(images) / elapsed, {"upload_s": t_up, "total_s": elapsed, "cpu": cpu}
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    images = make_labels(args.images)
    # The bare engine runs before and after the pipeline and counts as their mean: this machine's speed drifts
    # (shared host), and a drift between the two phases would otherwise show as a change of the ratio.
    before, found, cpu_before = bare_engine(images)
    pipe, detail = pipeline(images, args.workers, args.batch)
    after, _, cpu_after = bare_engine(images)
    bare, bare_cpu = (before + after) / 2, (cpu_before + cpu_after) / 2
    print(f"images: {len(images)} small labels (Code128 + QR), barcodes found by the bare engine: {found}")
    print(f"bare engine (decode + barcode, 1 process): {bare:8.1f} images/s  ({bare_cpu:.1f} ms CPU per image; "
          f"{before:.0f} before the pipeline, {after:.0f} after)")
    print(f"pipeline (upload -> results -> webhook, {args.workers} workers, batch {args.batch}): {pipe:8.1f} images/s"
          f"  (upload phase {detail['upload_s']:.1f}s of {detail['total_s']:.1f}s)")
    print(f"ratio pipeline / bare engine: {pipe / bare:.2f}  (goal >= 0.5)")
    n = len(images)
    print("CPU per image by component (ms): " + ", ".join(
        f"{k} {v * 1000 / n:.1f}" for k, v in sorted(detail["cpu"].items(), key=lambda kv: -kv[1]))
        + f"; total {sum(detail['cpu'].values()) * 1000 / n:.1f} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
