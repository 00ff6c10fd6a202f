"""The ``vlwatch`` command line: thin commands over plain functions.

Settings come from ``VLWATCH_*`` variables (read once here) and the YAML file named by ``VLWATCH_CONFIG``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import click

from services.config import ConfigError, load_config
from services.settings import Settings, SettingsError, load_settings


class Ctx:
    """Settings and config, loaded once per invocation; the store and Celery app only when a command needs them."""

    def __init__(self) -> None:
        try:
            self.settings: Settings = load_settings()
            self.config = load_config(self.settings.config)
        except (SettingsError, ConfigError) as exc:
            raise click.ClickException(str(exc)) from None
        self._app = None

    @property
    def db_url(self) -> str:
        return self.settings.db_url

    def store(self):  # noqa: ANN201
        from workers.runtime import make_store

        store = make_store(self.settings)
        store.ensure_bucket()
        return store

    def celery(self):  # noqa: ANN201
        if self._app is None:
            from workers.app import make_app

            self._app = make_app(self.settings)
        return self._app

    def send_job(self):  # noqa: ANN201
        from workers.app import sender_for

        return sender_for(self.celery())


pass_ctx = click.make_pass_decorator(Ctx, ensure=True)


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """vlwatch: vision analytics for warehouse and security images."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _ensure_db(ctx: Ctx) -> None:
    from services.migrate import upgrade

    if ctx.db_url.startswith("sqlite"):
        ctx.settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(ctx.db_url)


# ---- database ----------------------------------------------------------------------------------------------
@main.group()
def db() -> None:
    """Schema migrations (Alembic)."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Ctx) -> None:
    """Apply every migration up to the newest revision."""
    from services.migrate import current

    _ensure_db(ctx)
    click.echo(f"database at revision {current(ctx.db_url)}")


# ---- ingestion ---------------------------------------------------------------------------------------------
@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--source", required=True, help="Source name; its prefix in the bucket (or NAME/) is used.")
@pass_ctx
def upload(ctx: Ctx, paths: tuple[Path, ...], source: str) -> None:
    """Upload image files (folders recurse) to the bucket and queue them; registered ones are skipped."""
    from tqdm import tqdm

    from services.ingest import iter_upload_files
    from services.ingest import upload as do_upload

    total = sum(1 for _ in iter_upload_files(paths))
    with tqdm(total=total, unit="img", desc="upload", file=sys.stderr) as bar:
        report = do_upload(ctx.db_url, ctx.config, ctx.store(), list(paths), source, ctx.send_job(), bar.update)
    click.echo(f"uploaded {report.uploaded}, skipped {report.skipped} already registered")


@main.command()
@click.option("--prefix", default="", help="Only keys under this prefix.")
@click.option("--watch", is_flag=True, help="Keep scanning every --interval seconds.")
@click.option("--interval", default=30.0, show_default=True)
@pass_ctx
def scan(ctx: Ctx, prefix: str, watch: bool, interval: float) -> None:
    """Register objects that reached the bucket through any S3 client (fallback for missed events)."""
    from services.ingest import scan as do_scan

    store, send = ctx.store(), ctx.send_job()
    while True:
        n = do_scan(ctx.db_url, ctx.config, store, send, prefix=prefix)
        click.echo(f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ} registered {n} new object(s)")
        if not watch:
            return
        time.sleep(interval)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8471, show_default=True, type=int)
@click.option("--token", envvar="VLWATCH_NOTIFY_TOKEN", default=None, help="Bearer token senders must present.")
@click.option("--redis-url", default=None, help="Also consume MinIO's Redis notification target at this URL.")
@click.option("--redis-key", default="vlwatch-events", show_default=True)
@click.option("--redis-format", default="access", show_default=True, type=click.Choice(["access", "namespace"]))
@pass_ctx
def listen(ctx: Ctx, host: str, port: int, token: Optional[str], redis_url: Optional[str], redis_key: str,
           redis_format: str) -> None:
    """Register objects from bucket notifications: POST /events/s3 (S3 and MinIO webhook JSON) and
    POST /events/seaweedfs (SeaweedFS filer webhook); optionally MinIO's Redis target."""
    import signal

    from services.notify_server import consume_minio_redis, serve

    store, send = ctx.store(), ctx.send_job()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if redis_url:
        threading.Thread(target=consume_minio_redis, daemon=True, kwargs=dict(
            redis_url=redis_url, key=redis_key, format=redis_format, db_url=ctx.db_url, config=ctx.config,
            store=store, send_job=send, stop_event=stop)).start()
    try:
        serve(ctx.db_url, ctx.config, store, send, host=host, port=port, token=token, stop_event=stop,
              on_ready=lambda url: click.echo(f"listening for bucket notifications on {url}"))
    except KeyboardInterrupt:
        stop.set()


# ---- workers and delivery ----------------------------------------------------------------------------------
@main.command()
@click.option("--queues", "-Q", default="cpu", show_default=True, help="Comma-separated queues: cpu, gpu.")
@click.option("--concurrency", "-c", default=1, show_default=True, type=int)
@click.option("--pool", default="prefork", show_default=True, type=click.Choice(["prefork", "solo", "threads"]))
@click.option("--loglevel", default="INFO", show_default=True)
@pass_ctx
def worker(ctx: Ctx, queues: str, concurrency: int, pool: str, loglevel: str) -> None:
    """Run a Celery worker on QUEUES (one process per GPU: use --pool solo on gpu queues)."""
    from workers.runtime import Runtime, set_runtime

    set_runtime(Runtime.from_settings(ctx.settings))
    ctx.celery().worker_main(["worker", "-Q", queues, "-c", str(concurrency), "-P", pool, "-l", loglevel,
                              "--prefetch-multiplier", "1", "-n", f"vlwatch-{queues.replace(',', '-')}@%h"])


@main.command()
@click.option("--watch", is_flag=True, help="Keep going (poll every VLWATCH_DISPATCH_INTERVAL_SECONDS).")
@pass_ctx
def dispatch(ctx: Ctx, watch: bool) -> None:
    """Deliver outbox events to webhook subscribers and connectors; also re-sends stuck jobs (the reconciler)."""
    from connectors.outbox import dispatch_once
    from workers.reconcile import reconcile

    s = ctx.settings
    _sync_webhooks(ctx)
    targets = _connectors(ctx)
    send, next_reconcile = ctx.send_job(), 0.0
    while True:
        counts = dispatch_once(ctx.db_url, schedule=s.webhook_retry_schedule, timeout=s.webhook_timeout_seconds,
                               connectors=targets)
        rec = None
        if time.monotonic() >= next_reconcile:  # the reconciler runs on its own, slower cadence
            rec = reconcile(ctx.db_url, send, requeue_after=s.requeue_after_seconds)
            next_reconcile = time.monotonic() + s.reconcile_interval_seconds
        if not watch:
            click.echo(json.dumps({"delivery": _jsonable(counts), "reconcile": rec}))
            return
        if counts.sent == 0 and counts.fanned_out == 0:  # busy rounds follow each other without waiting
            time.sleep(s.dispatch_interval_seconds)


@main.command()
@click.option("--watch", is_flag=True)
@click.option("--interval", default=15.0, show_default=True)
@pass_ctx
def reconcile(ctx: Ctx, watch: bool, interval: float) -> None:
    """Re-send jobs left queued and reclaim jobs whose worker died (expired lease)."""
    from workers.reconcile import reconcile as do_reconcile

    while True:
        click.echo(json.dumps(do_reconcile(ctx.db_url, ctx.send_job(), ctx.settings.requeue_after_seconds)))
        if not watch:
            return
        time.sleep(interval)


def _jsonable(x: Any) -> Any:
    if hasattr(x, "__dict__"):
        return {k: v for k, v in vars(x).items() if not k.startswith("_")}
    return x


# ---- results -----------------------------------------------------------------------------------------------
@main.command()
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed"]))
@click.option("--limit", default=20, show_default=True)
@pass_ctx
def jobs(ctx: Ctx, status: Optional[str], limit: int) -> None:
    """Recent jobs with their status, timings and errors."""
    from services.db import session_scope
    from services.queries import job_counts, list_jobs

    with session_scope(ctx.db_url) as s:
        counts = job_counts(s)
        rows = list_jobs(s, status, limit)
        click.echo("  ".join(f"{k}={v}" for k, v in counts.items()))
        for job, image in rows:
            took = sum((job.timings or {}).values())
            click.echo(f"{job.id:>6}  {job.status:<9}  {image.key:<40}  {took:6.2f}s  {job.error or ''}")


@main.command()
@click.argument("image")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def results(ctx: Ctx, image: str, as_json: bool) -> None:
    """Results of IMAGE (id or object key)."""
    from services.db import session_scope
    from services.queries import NotFound, find_image, image_results

    with session_scope(ctx.db_url) as s:
        try:
            res = image_results(s, find_image(s, image))
        except NotFound as exc:
            raise click.ClickException(str(exc)) from None
        job = res.job
        out = {"image": {"id": res.image.id, "key": res.image.key, "width": res.image.width,
                         "height": res.image.height},
               "job": None if job is None else {"id": job.id, "status": job.status, "error": job.error,
                                                "timings": job.timings},
               "results": res.rows}
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
        return
    click.echo(f"{out['image']['key']}  ({out['image']['width']}x{out['image']['height']})  "
               f"job {out['job'] and out['job']['id']}: {out['job'] and out['job']['status']}")
    if job is not None and job.error:
        click.echo(f"  error: {job.error}")
    for kind, rows in res.rows.items():
        for r in rows:
            what = r.get("value") or r.get("text") or r.get("label")
            box = ", ".join(f"{r[c]:.0f}" for c in ("x1", "y1", "x2", "y2"))
            score = "" if r.get("score") is None else f"  {r['score']:.2f}"
            extra = f" {r['format']}" if kind == "barcodes" else ""
            click.echo(f"  {kind:<8}{extra}  {what!s:<40}  [{box}]{score}")


@main.command()
@click.argument("image")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@pass_ctx
def render(ctx: Ctx, image: str, output: Path) -> None:
    """Draw IMAGE's boxes and labels into a PNG."""
    from services.annotate import annotate_image
    from services.queries import NotFound

    try:
        annotate_image(ctx.db_url, ctx.store(), image, output, ctx.settings)
    except NotFound as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {output}")


# ---- webhooks ----------------------------------------------------------------------------------------------
@main.group()
def webhooks() -> None:
    """Webhook subscriptions (Standard Webhooks signatures)."""


def _sync_webhooks(ctx: Ctx) -> None:
    """Subscriptions named in the YAML file are created or updated in SQL."""
    from connectors.outbox import upsert_subscription
    from services.db import session_scope

    if not ctx.config.webhooks:
        return
    with session_scope(ctx.db_url) as s:
        for w in ctx.config.webhooks:
            upsert_subscription(s, w.name, w.url, list(w.events), w.secret)


@webhooks.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--event", "events", multiple=True, default=("job.succeeded", "job.failed"), show_default=True)
@click.option("--secret", default=None, help="whsec_...; generated when omitted.")
@pass_ctx
def webhooks_add(ctx: Ctx, name: str, url: str, events: tuple[str, ...], secret: Optional[str]) -> None:
    from connectors.outbox import add_subscription
    from services.config import WebhookConfig
    from services.db import session_scope

    try:
        WebhookConfig(name=name, url=url, events=events, secret=secret)
    except Exception as exc:  # noqa: BLE001 - pydantic's message names the field
        raise click.ClickException(str(exc)) from None
    with session_scope(ctx.db_url) as s:
        sub = add_subscription(s, name, url, list(events), secret)
        click.echo(f"added {sub.name} -> {sub.url}\nsecret: {sub.secret}")


@webhooks.command("list")
@pass_ctx
def webhooks_list(ctx: Ctx) -> None:
    from connectors.outbox import list_subscriptions, subscription_stats
    from services.db import session_scope

    with session_scope(ctx.db_url) as s:
        for sub in list_subscriptions(s):
            stats = subscription_stats(s, sub.id)
            state = "active" if sub.active else "paused"
            click.echo(f"{sub.name:<16} {state:<7} {sub.url}  events={','.join(sub.event_types)}  "
                       + " ".join(f"{k}={v}" for k, v in stats.items()))


@webhooks.command("replay")
@click.option("--name", default=None, help="Only this subscription.")
@click.option("--since", default=None, help="ISO time: only events created since then.")
@click.option("--all", "everything", is_flag=True, help="Delivered ones too, not only dead-lettered.")
@pass_ctx
def webhooks_replay(ctx: Ctx, name: Optional[str], since: Optional[str], everything: bool) -> None:
    """Re-send dead-lettered deliveries (or all, with --all), keeping each webhook-id."""
    from connectors.outbox import replay
    from services.db import session_scope

    when = None
    if since:
        when = datetime.fromisoformat(since)
        when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    status = ("dead", "delivered") if everything else ("dead",)
    with session_scope(ctx.db_url) as s:
        n = replay(s, subscription=name, status=status, since=when)
    click.echo(f"{n} delivery(ies) queued again; `vlwatch dispatch` sends them")


# ---- connectors --------------------------------------------------------------------------------------------
def _connectors(ctx: Ctx, names: tuple[str, ...] = ()) -> dict[str, Any]:
    """The YAML file's connectors, built, and recorded in SQL (so fan-out makes their deliveries)."""
    from connectors.registry import build_connector

    for n in names:
        if n not in ctx.config.connectors:
            known = ", ".join(ctx.config.connectors) or "none configured"
            raise click.ClickException(f"unknown connector {n!r} (in the YAML file: {known})")
    _connectors_sync_only(ctx)
    if not ctx.config.connectors:
        return {}
    store = ctx.store() if any(c.kind == "security" for c in ctx.config.connectors.values()) else None
    return {n: build_connector(n, ctx.config, store) for n in (names or tuple(ctx.config.connectors))}


@main.group()
def connectors() -> None:
    """Inventory and security database connectors (configured under `connectors:` in the YAML file)."""


@connectors.command("status")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def connectors_status(ctx: Ctx, as_json: bool) -> None:
    """Per connector: deliveries pending (due now), delivered, dead-lettered, lag, last error."""
    from connectors.delivery import status
    from services.db import session_scope

    _connectors_sync_only(ctx)
    with session_scope(ctx.db_url) as s:
        rows = status(s)
    if as_json:
        click.echo(json.dumps([_jsonable(r) for r in rows], default=str))
        return
    if not rows:
        click.echo("no connectors configured (add them under `connectors:` in the YAML file)")
    now = datetime.now(timezone.utc)
    for r in rows:
        lag = f"{(now - r.oldest_pending_at).total_seconds():.0f}s" if r.oldest_pending_at else "-"
        state = "active" if r.active else "removed"
        click.echo(f"{r.name:<16} {r.kind:<10} {state:<8} pending={r.pending} (due {r.due}) "
                   f"delivered={r.delivered} dead={r.dead} lag={lag}"
                   + (f"\n  last error: {r.last_error}" if r.last_error else ""))


def _connectors_sync_only(ctx: Ctx) -> None:
    from connectors.delivery import sync_connectors
    from services.db import session_scope

    with session_scope(ctx.db_url) as s:
        sync_connectors(s, {n: c.kind for n, c in ctx.config.connectors.items()})


def _parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO time (e.g. 2026-11-25T08:00 or 2026-11-25T08:00+01:00)")
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


@connectors.command("replay")
@click.option("--since", required=True, help="ISO time (UTC unless it has an offset): events created since then.")
@click.option("--name", default=None, help="Only this connector.")
@click.option("--dead-only", is_flag=True, help="Only dead-lettered deliveries (default: dead and delivered; "
                                                 "connector writes are idempotent, so re-applying is safe).")
@pass_ctx
def connectors_replay(ctx: Ctx, since: str, name: Optional[str], dead_only: bool) -> None:
    """Deliver events since TIME again; events from before a connector existed are delivered to it too."""
    from connectors.delivery import replay
    from services.db import session_scope

    when = _parse_time(since)
    _connectors_sync_only(ctx)
    status = ("dead",) if dead_only else ("dead", "delivered")
    try:
        with session_scope(ctx.db_url) as s:
            n = replay(s, since=when, connector=name, status=status)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{n} connector delivery(ies) due again; `vlwatch dispatch` applies them")


@connectors.command("migrate")
@click.argument("names", nargs=-1)
@pass_ctx
def connectors_migrate(ctx: Ctx, names: tuple[str, ...]) -> None:
    """Create or update the target tables of the named connectors (default: all)."""
    from sqlalchemy.exc import DBAPIError

    for n, c in _connectors(ctx, names).items():
        try:
            c.migrate()
        except DBAPIError as exc:
            raise click.ClickException(f"connectors.{n}.url: {exc.orig}") from None
        click.echo(f"{n}: target schema ready")


@connectors.command("check")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for each target.")
@pass_ctx
def connectors_check(ctx: Ctx, timeout: float) -> None:
    """Connect to every target database and check its tables; exit 1 naming the field of each failure."""
    from connectors.health import check_target

    if not ctx.config.connectors:
        click.echo("no connectors configured")
        return
    failed = 0
    for n, c in ctx.config.connectors.items():
        problem = check_target(c.kind, c.url, timeout)
        if problem:
            failed += 1
            click.echo(f"connectors.{n}.url: {problem}", err=True)
        else:
            click.echo(f"{n}: ok ({c.kind})")
    if failed:
        sys.exit(1)


# ---- demo and model tools ----------------------------------------------------------------------------------
@main.command()
@click.option("--out", default=Path("vlwatch-demo"), type=click.Path(file_okay=False, path_type=Path),
              show_default=True, help="Working folder (recreated).")
def demo(out: Path) -> None:
    """Run the whole flow on the bundled samples with the embedded default (no servers needed)."""
    from services.demo import run_demo

    run_demo(out)


def _register_model_group() -> None:
    try:
        from services.cli_model import model_group
    except ModuleNotFoundError as exc:  # the model tools are optional in a services-only install
        if exc.name != "services.cli_model":
            raise
        return
    main.add_command(model_group, "model")


_register_model_group()
