"""Ingestion commands: ``upload`` (bulk, progress bar), ``scan`` (objects PUT by any S3 client) and ``listen``
(bucket notifications). All three register through ``services.ingest.register``."""

from __future__ import annotations

import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import click

from services.cli.context import Ctx, pass_ctx


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--source", required=True, help="Source name; its prefix in the bucket (or NAME/) is used.")
@pass_ctx
def upload(ctx: Ctx, paths: tuple[Path, ...], source: str) -> None:
    """Upload image files (folders recurse) to the bucket and queue them; registered ones are skipped."""
    from tqdm import tqdm

    from services.ingest.upload import iter_upload_files
    from services.ingest.upload import upload as do_upload

    total = sum(1 for _ in iter_upload_files(paths))
    with tqdm(total=total, unit="img", desc="upload", file=sys.stderr) as bar:
        report = do_upload(ctx.db_url, ctx.config, ctx.store(), list(paths), source, ctx.send_job(), bar.update)
    click.echo(f"uploaded {report.uploaded}, skipped {report.skipped} already registered")


@click.command()
@click.option("--prefix", default="", help="Only keys under this prefix.")
@click.option("--watch", is_flag=True, help="Keep scanning every --interval seconds (riding out outages).")
@click.option("--interval", default=30.0, show_default=True, type=click.FloatRange(min=0.1))
@pass_ctx
def scan(ctx: Ctx, prefix: str, watch: bool, interval: float) -> None:
    """Register objects that reached the bucket through any S3 client (fallback for missed events)."""
    from services.ingest.scan import scan as do_scan
    from services.loop import keep_running

    def report(n: int) -> None:
        click.echo(f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ} registered {n} new object(s)")

    if not watch:
        report(do_scan(ctx.db_url, ctx.config, ctx.store(), ctx.send_job(), prefix=prefix))
        return
    store, send = ctx.store(ensure_bucket=False), ctx.send_job()  # the store may be down at start: the loop waits
    keep_running(lambda: do_scan(ctx.db_url, ctx.config, store, send, prefix=prefix), interval=interval,
                 name="scanner", on_result=report)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8471, show_default=True, type=int)
@click.option("--token", envvar="VLWATCH_NOTIFY_TOKEN", default=None,
              help="A bearer token senders may present (besides API tokens made with --upload for every source).")
@click.option("--no-auth", is_flag=True, help="Accept notifications without a token (local use only).")
@click.option("--redis-url", default=None, help="Also consume MinIO's Redis notification target at this URL.")
@click.option("--redis-key", default="vlwatch-events", show_default=True)
@click.option("--redis-format", default="access", show_default=True, type=click.Choice(["access", "namespace"]))
@pass_ctx
def listen(ctx: Ctx, host: str, port: int, token: Optional[str], no_auth: bool, redis_url: Optional[str],
           redis_key: str, redis_format: str) -> None:
    """Register objects from bucket notifications: POST /events/s3 (S3 and MinIO webhook JSON) and
    POST /events/seaweedfs (SeaweedFS filer webhook); optionally MinIO's Redis target. GET /healthz and /metrics
    on the same port."""
    import signal

    from services.ingest.http_guard import Limits
    from services.ingest.listener import consume_minio_redis, serve

    store, send = ctx.store(), ctx.send_job()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if redis_url:
        threading.Thread(target=consume_minio_redis, daemon=True, kwargs=dict(
            redis_url=redis_url, key=redis_key, format=redis_format, db_url=ctx.db_url, config=ctx.config,
            store=store, send_job=send, stop_event=stop)).start()
    try:
        serve(ctx.db_url, ctx.config, store, send, host=host, port=port, token=token, stop_event=stop,
              on_ready=lambda url: click.echo(f"listening for bucket notifications on {url}"), no_auth=no_auth,
              limits=Limits.from_settings(ctx.settings))
    except KeyboardInterrupt:
        stop.set()


COMMANDS = [upload, scan, listen]
