"""``vlwatch dispatch``: deliver outbox events to webhook subscribers and connectors, and run the reconciler.

With ``--watch`` it keeps going through database outages of any length (logging, backing off, resuming by
itself), and the reconciler runs on a thread of its own, so a slow delivery never delays the recovery of jobs.
"""

from __future__ import annotations

import json
import signal
import threading
from typing import Any, Callable, Optional

import click

from services.cli.context import Ctx, jsonable, pass_ctx


def check_webhook_urls(ctx: Ctx) -> None:
    """Every webhook URL of the YAML file passes the outbound guard; else exit naming the field."""
    guard = ctx.outbound_guard()
    problems = [f"webhooks[{i}].url: {why}" for i, w in enumerate(ctx.config.webhooks)
                if (why := guard.check_url(w.url))]
    if problems:
        raise click.ClickException("\n".join(problems))


def check_target_urls(ctx: Ctx, names: tuple[str, ...]) -> None:
    """The target databases of connectors ``names`` pass the outbound guard; else exit naming the field."""
    from connectors.targets import target_refusal

    guard = ctx.outbound_guard()
    problems = [f"connectors.{n}.url: {why}" for n in names
                if (why := target_refusal(ctx.config.connectors[n].url, guard))]
    if problems:
        raise click.ClickException("\n".join(problems))


def sync_webhooks(ctx: Ctx) -> None:
    """Subscriptions named in the YAML file are created or updated in SQL."""
    from connectors.webhooks import upsert_subscription
    from services.db import session_scope

    if not ctx.config.webhooks:
        return
    with session_scope(ctx.db_url) as s:
        for w in ctx.config.webhooks:
            upsert_subscription(s, w.name, w.url, list(w.events), w.secret)


def sync_connectors(ctx: Ctx) -> None:
    """The ``connectors`` table follows the YAML file (so fan-out makes deliveries for every connector)."""
    from connectors.databases import sync_connectors as sync
    from services.db import session_scope

    with session_scope(ctx.db_url) as s:
        sync(s, {n: c.kind for n, c in ctx.config.connectors.items()})


def build_connectors(ctx: Ctx, names: tuple[str, ...] = ()) -> dict[str, Any]:
    """The YAML file's connectors (or those ``names``), their targets checked by the outbound guard, built and
    recorded in SQL."""
    from connectors.registry import build_connector

    for n in names:
        if n not in ctx.config.connectors:
            known = ", ".join(ctx.config.connectors) or "none configured"
            raise click.ClickException(f"unknown connector {n!r} (in the YAML file: {known})")
    names = names or tuple(ctx.config.connectors)
    check_target_urls(ctx, names)
    sync_connectors(ctx)
    if not ctx.config.connectors:
        return {}
    store = ctx.store() if any(c.kind == "security" for c in ctx.config.connectors.values()) else None
    return {n: build_connector(n, ctx.config, store) for n in names}


def _until_done(step: Callable[[], Any], name: str, stop: threading.Event, cap: float) -> Optional[Any]:
    """``step()``'s value, trying again with backoff while it fails (a configuration error still ends it)."""
    from services.loop import Backoff

    backoff = Backoff(name, cap)
    while not stop.is_set():
        try:
            value = step()
            backoff.ok()
            return value
        except click.ClickException:
            raise
        except Exception as exc:  # noqa: BLE001 - the database (or the store) is away at start-up
            stop.wait(backoff.failed(exc))
    return None


def _reconcile_forever(ctx: Ctx, stop: threading.Event) -> None:
    """Re-send stuck jobs every VLWATCH_RECONCILE_INTERVAL_SECONDS, on its own thread, through any outage."""
    from workers.lease import reconcile_forever

    reconcile_forever(ctx.settings, ctx.send_job(), stop)


@click.command()
@click.option("--watch", is_flag=True, help="Keep going (poll every VLWATCH_DISPATCH_INTERVAL_SECONDS).")
@click.option("--metrics-port", type=int, default=None, envvar="VLWATCH_METRICS_PORT",
              help="Serve Prometheus /metrics (delivery state) on this port.")
@pass_ctx
def dispatch(ctx: Ctx, watch: bool, metrics_port: Optional[int]) -> None:
    """Deliver outbox events to webhook subscribers and connectors; also re-sends stuck jobs (the reconciler)."""
    from connectors.dispatch import Dispatcher
    from connectors.webhooks import WebhookSender

    if metrics_port is not None:
        from services import metrics

        metrics.add_state(metrics.DeliveriesState(ctx.db_url))
        metrics.start_server(metrics_port)

    s = ctx.settings
    check_webhook_urls(ctx)
    stop = threading.Event()
    with WebhookSender(ctx.outbound_guard()) as sender:  # kept for every round: its connections stay open

        def dispatcher(targets: dict[str, Any]) -> Dispatcher:
            return Dispatcher(ctx.db_url, s.webhook_retry_schedule, sender, targets,
                              timeout=s.webhook_timeout_seconds, per_target=s.webhook_concurrency,
                              lease_s=s.delivery_lease_seconds, poll_s=s.dispatch_interval_seconds)

        if not watch:
            from workers.lease import reconcile

            sync_webhooks(ctx)
            counts = dispatcher(build_connectors(ctx)).once()
            rec = reconcile(ctx.db_url, ctx.send_job(), requeue_after=s.requeue_after)
            click.echo(json.dumps({"delivery": jsonable(counts), "reconcile": rec}))
            return
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        threading.Thread(target=_reconcile_forever, args=(ctx, stop), name="vlwatch-reconciler", daemon=True).start()
        targets = _until_done(lambda: (sync_webhooks(ctx), build_connectors(ctx))[1], "starting the dispatcher",
                              stop, cap=30.0)
        if targets is not None:
            try:
                dispatcher(targets).run(stop)
            except KeyboardInterrupt:
                stop.set()


COMMANDS = [dispatch]
