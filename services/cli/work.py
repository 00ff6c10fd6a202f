"""Commands that run jobs: ``worker`` (a Celery worker on some queues) and ``reconcile`` (re-send jobs whose
task was lost, reclaim jobs whose worker died)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import click

from services.cli.context import Ctx, pass_ctx


@click.command()
@click.option("--queues", "-Q", default="cpu", show_default=True, help="Comma-separated queues: cpu, gpu.")
@click.option("--concurrency", "-c", default=1, show_default=True, type=int)
@click.option("--pool", default="prefork", show_default=True, type=click.Choice(["prefork", "solo", "threads"]))
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--metrics-port", type=int, default=None, envvar="VLWATCH_METRICS_PORT",
              help="Serve Prometheus /metrics on this port (summed over the prefork children).")
@pass_ctx
def worker(ctx: Ctx, queues: str, concurrency: int, pool: str, loglevel: str, metrics_port: Optional[int]) -> None:
    """Run a Celery worker on QUEUES (one process per GPU: use --pool solo on gpu queues)."""
    if metrics_port is not None:
        _multiprocess_metrics(ctx)
    from workers.runtime import Runtime, set_runtime

    if metrics_port is not None:
        from services.metrics import start_server

        start_server(metrics_port)
    set_runtime(Runtime(ctx.settings, ctx.config, ctx.store(ensure_bucket=False)))
    ctx.celery().worker_main(["worker", "-Q", queues, "-c", str(concurrency), "-P", pool, "-l", loglevel,
                              "--prefetch-multiplier", "1", "-n", f"vlwatch-{queues.replace(',', '-')}@%h"])


def _multiprocess_metrics(ctx: Ctx) -> None:
    """Prefork children each write their samples to files in PROMETHEUS_MULTIPROC_DIR, which the parent sums. The
    variable must be set before prometheus_client is first imported, and the folder must start empty."""
    if "prometheus_client" in sys.modules and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise click.ClickException("prometheus_client was imported before the worker set up multiprocess metrics")
    folder = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or ctx.settings.data_dir / f"metrics-{os.getpid()}")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # samples of an earlier run
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder.resolve())


@click.command()
@click.option("--watch", is_flag=True, help="Keep going (riding out outages); every worker also runs one.")
@click.option("--interval", default=None, type=click.FloatRange(min=0.1),
              help="Seconds between passes (default VLWATCH_RECONCILE_INTERVAL_SECONDS, else a quarter lease).")
@pass_ctx
def reconcile(ctx: Ctx, watch: bool, interval: float | None) -> None:
    """Re-send jobs whose task was lost and reclaim jobs whose worker died (expired lease). Every worker runs the
    reconciler too (VLWATCH_WORKER_RECONCILES); this command is for deployments that turn that off."""
    from workers.lease import reconcile as do_reconcile
    from workers.lease import reconcile_forever

    send, s = ctx.send_job(), ctx.settings
    if not watch:
        click.echo(json.dumps(do_reconcile(ctx.db_url, send, requeue_after=s.requeue_after)))
        return
    reconcile_forever(s, send, on_result=lambda counts: click.echo(json.dumps(counts)), interval=interval)


COMMANDS = [worker, reconcile]
