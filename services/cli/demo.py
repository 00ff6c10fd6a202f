"""``vlwatch demo``: the whole flow on the bundled samples, embedded default, nothing to install.

SQLite file, local-folder object store, folder broker and an in-process Celery worker; a local webhook receiver
verifies every signed event. Prints the results table, writes annotated PNGs and shows the verified events.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import click

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
MARKER = ".vlwatch-demo"  # in every folder the demo made: the only folders it deletes


def _wait(predicate, timeout: float, what: str, poll: float = 0.1) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise click.ClickException(f"demo: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def run_demo(out: Path, samples: Path = SAMPLES, timeout: float = 300.0) -> dict:
    from celery.contrib.testing.worker import start_worker
    from tqdm import tqdm

    from connectors.dispatch import dispatch_once, pending_deliveries
    from connectors.outbound import OutboundGuard
    from connectors.webhooks import WebhookSender, add_subscription
    from services.cli.receiver import WebhookReceiver
    from services.config import AppConfig, Profile, SourceConfig
    from services.db import session_scope
    from services.ingest.upload import iter_upload_files, upload
    from services.migrate import upgrade
    from services.queries import image_results, job_counts, list_jobs
    from services.render import annotate_image
    from services.settings import load_settings
    from workers.app import make_app, sender_for
    from services.storage import store_from_settings
    from workers.runtime import Runtime, set_runtime

    t_start = time.perf_counter()
    _fresh_folder(out)
    # The demo's receiver listens on loopback, which outbound connections reach only when allowed.
    settings = load_settings(data_dir=out, database_url=None, broker_url="filesystem://", s3_endpoint=None,
                             webhook_retry_schedule=(0.2, 0.5, 1.0), outbound_allow=("127.0.0.1/32",))
    config = AppConfig(profiles={"default": Profile(analyzers=("barcode", "ocr"))},
                       sources={"demo": SourceConfig(profile="default", prefix="demo/")})
    upgrade(settings.db_url)
    store = store_from_settings(settings)
    store.ensure_bucket()
    rt = Runtime(settings, config, store)
    set_runtime(rt)
    app = make_app(settings)

    click.echo(f"vlwatch demo: data in {out}/ (SQLite {settings.db_url.removeprefix('sqlite:///')})")
    click.echo("loading engines (zxing-cpp barcodes, RapidOCR) ...")
    for name in config.profiles["default"].analyzers:
        rt.analyzer(name)

    guard = OutboundGuard.allowing(settings.outbound_allow)
    with WebhookReceiver() as receiver, WebhookSender(guard) as sender, start_worker(
            app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30):
        with session_scope(settings.db_url) as s:
            add_subscription(s, "demo-receiver", receiver.url, ["job.succeeded", "job.failed"], receiver.secret)
        files = list(iter_upload_files([samples]))
        with tqdm(total=len(files), unit="img", desc="upload", file=sys.stderr) as bar:
            report = upload(settings.db_url, config, store, [samples], "demo", sender_for(app), bar.update)
        click.echo(f"uploaded {report.uploaded} images; analysing ...")

        def done() -> bool:
            with session_scope(settings.db_url) as s:
                c = job_counts(s)
            return c["queued"] == 0 and c["running"] == 0

        _wait(done, timeout, "the worker to finish the jobs")

        def delivered() -> bool:
            dispatch_once(settings.db_url, schedule=settings.webhook_retry_schedule,
                          timeout=settings.webhook_timeout_seconds, sender=sender)
            with session_scope(settings.db_url) as s:
                return pending_deliveries(s) == 0

        _wait(delivered, 60, "webhook deliveries", poll=0.2)
        events = receiver.events()

    rows = []
    annotated = out / "annotated"
    with session_scope(settings.db_url) as s:
        for job, image in sorted(list_jobs(s, limit=1000), key=lambda t: t[1].key):
            res = image_results(s, image)
            rows.append((image.key, job, res.rows))
    for key, _job, _ in rows:
        annotate_image(settings.db_url, store, key, annotated / (Path(key).stem + ".png"), settings)
    _print_table(rows)
    click.echo(f"\nannotated images: {annotated}/ ({len(rows)} PNG files)")
    click.echo(f"\nwebhook receiver at {receiver.url} verified {len(events)} signed event(s):")
    for e in events:
        data = e["payload"]
        key = data.get("data", {}).get("image", {}).get("key")
        click.echo(f"  {e['webhook_id']}  {data.get('type'):<14} {key}")
    elapsed = time.perf_counter() - t_start
    click.echo(f"\ndone in {elapsed:.1f}s")
    return {"jobs": rows, "events": events, "elapsed": elapsed}


def _fresh_folder(out: Path) -> None:
    """An empty ``out``: a folder an earlier demo made (it holds ``MARKER``) is recreated; anything else that
    holds files is refused, never deleted."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise click.ClickException(f"--out {out} exists and is not a folder; choose another --out")
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise click.ClickException(f"--out {out} holds files and is not a folder `vlwatch demo` made (it has no "
                                       f"{MARKER} file); not deleting it - choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `vlwatch demo`; the next demo run with this --out deletes this folder\n")


def _print_table(rows: list) -> None:  # noqa: ANN001
    """One block per image: status and per-stage timings, then every barcode and text line."""
    click.echo("\nresults")
    click.echo("=" * 100)
    for key, job, res in rows:
        timings = "  ".join(f"{k} {v * 1000:.0f} ms" for k, v in (job.timings or {}).items())
        click.echo(f"{key:<40} {job.status:<10} {timings}")
        if job.status == "failed":
            click.echo(f"    reason: {job.error}")
        for r in res["barcodes"]:
            click.echo(f"    barcode  {r['format']:<10} {r['value']}")
        for r in res["text_lines"]:
            click.echo(f"    text     {r['score']:.2f}       {r['text']}")
        click.echo("-" * 100)


@click.command()
@click.option("--out", default=Path("vlwatch-demo"), type=click.Path(file_okay=False, path_type=Path),
              show_default=True, help="Working folder (one an earlier demo made is recreated; any other that "
                                      "holds files is refused).")
def demo(out: Path) -> None:
    """Run the whole flow on the bundled samples with the embedded default (no servers needed)."""
    run_demo(out)


COMMANDS = [demo]
