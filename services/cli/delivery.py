"""``vlwatch dispatch``: deliver outbox events to webhook subscribers and connectors, and run the reconciler."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from services.cli.context import Ctx, jsonable, pass_ctx


def sync_webhooks(ctx: Ctx) -> None:
    """Subscriptions named in the YAML file are created or updated in SQL."""
    from connectors.outbox import upsert_subscription
    from services.db import session_scope

    if not ctx.config.webhooks:
        return
    with session_scope(ctx.db_url) as s:
        for w in ctx.config.webhooks:
            upsert_subscription(s, w.name, w.url, list(w.events), w.secret)


def sync_connectors(ctx: Ctx) -> None:
    """The ``connectors`` table follows the YAML file (so fan-out makes deliveries for every connector)."""
    from connectors.delivery import sync_connectors as sync
    from services.db import session_scope

    with session_scope(ctx.db_url) as s:
        sync(s, {n: c.kind for n, c in ctx.config.connectors.items()})


def build_connectors(ctx: Ctx, names: tuple[str, ...] = ()) -> dict[str, Any]:
    """The YAML file's connectors (or those ``names``), built and recorded in SQL."""
    from connectors.registry import build_connector

    for n in names:
        if n not in ctx.config.connectors:
            known = ", ".join(ctx.config.connectors) or "none configured"
            raise click.ClickException(f"unknown connector {n!r} (in the YAML file: {known})")
    sync_connectors(ctx)
    if not ctx.config.connectors:
        return {}
    store = ctx.store() if any(c.kind == "security" for c in ctx.config.connectors.values()) else None
    return {n: build_connector(n, ctx.config, store) for n in (names or tuple(ctx.config.connectors))}


@click.command()
@click.option("--watch", is_flag=True, help="Keep going (poll every VLWATCH_DISPATCH_INTERVAL_SECONDS).")
@pass_ctx
def dispatch(ctx: Ctx, watch: bool) -> None:
    """Deliver outbox events to webhook subscribers and connectors; also re-sends stuck jobs (the reconciler)."""
    from connectors.outbox import dispatch_once
    from workers.lease import reconcile

    s = ctx.settings
    sync_webhooks(ctx)
    targets = build_connectors(ctx)
    send, next_reconcile = ctx.send_job(), 0.0
    while True:
        counts = dispatch_once(ctx.db_url, schedule=s.webhook_retry_schedule, timeout=s.webhook_timeout_seconds,
                               connectors=targets)
        rec = None
        if time.monotonic() >= next_reconcile:  # the reconciler runs on its own, slower cadence
            rec = reconcile(ctx.db_url, send, requeue_after=s.requeue_after)
            next_reconcile = time.monotonic() + s.reconcile_every
        if not watch:
            click.echo(json.dumps({"delivery": jsonable(counts), "reconcile": rec}))
            return
        if counts.sent == 0 and counts.fanned_out == 0:  # busy rounds follow each other without waiting
            time.sleep(s.dispatch_interval_seconds)


COMMANDS = [dispatch]
