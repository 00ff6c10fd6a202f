"""``vlwatch connectors``: inventory and security database connectors (``connectors:`` in the YAML file): their
delivery state, replay, target schemas and reachability."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Optional

import click

from services.cli.context import Ctx, jsonable, parse_time, pass_ctx
from services.cli.delivery import build_connectors, sync_connectors


@click.group("connectors")
def connectors_group() -> None:
    """Inventory and security database connectors (configured under `connectors:` in the YAML file)."""


@connectors_group.command("status")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def connectors_status(ctx: Ctx, as_json: bool) -> None:
    """Per connector: deliveries pending (due now), delivered, dead-lettered, lag, last error."""
    from connectors.databases import status
    from services.db import session_scope
    from services.safetext import mask_secrets

    sync_connectors(ctx)
    with session_scope(ctx.db_url) as s:
        rows = status(s)
    if as_json:
        click.echo(mask_secrets(json.dumps([jsonable(r) for r in rows], default=str)))
        return
    if not rows:
        click.echo("no connectors configured (add them under `connectors:` in the YAML file)")
    now = datetime.now(timezone.utc)
    for r in rows:
        lag = f"{(now - r.oldest_pending_at).total_seconds():.0f}s" if r.oldest_pending_at else "-"
        state = "active" if r.active else "removed"
        click.echo(f"{r.name:<16} {r.kind:<10} {state:<8} pending={r.pending} (due {r.due}) "
                   f"delivered={r.delivered} dead={r.dead} lag={lag}"
                   + (f"\n  last error: {mask_secrets(r.last_error)}" if r.last_error else ""))


@connectors_group.command("replay")
@click.option("--since", required=True, help="ISO time (UTC unless it has an offset): events created since then.")
@click.option("--name", default=None, help="Only this connector.")
@click.option("--dead-only", is_flag=True, help="Only dead-lettered deliveries (default: dead and delivered; "
                                                 "connector writes are idempotent, so re-applying is safe).")
@pass_ctx
def connectors_replay(ctx: Ctx, since: str, name: Optional[str], dead_only: bool) -> None:
    """Deliver events since TIME again; events from before a connector existed are delivered to it too."""
    from connectors.databases import replay
    from services.db import session_scope

    when = parse_time(since)
    sync_connectors(ctx)
    status = ("dead",) if dead_only else ("dead", "delivered")
    try:
        with session_scope(ctx.db_url) as s:
            n = replay(s, since=when, connector=name, status=status)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{n} connector delivery(ies) due again; `vlwatch dispatch` applies them")


@connectors_group.command("migrate")
@click.argument("names", nargs=-1)
@pass_ctx
def connectors_migrate(ctx: Ctx, names: tuple[str, ...]) -> None:
    """Create or update the target tables of the named connectors (default: all)."""
    from sqlalchemy.exc import DBAPIError

    from services.safetext import mask_secrets

    for n, c in build_connectors(ctx, names).items():
        try:
            c.migrate()
        except DBAPIError as exc:
            raise click.ClickException(mask_secrets(f"connectors.{n}.url: {exc.orig}")) from None
        click.echo(f"{n}: target schema ready")


@connectors_group.command("check")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for each target.")
@pass_ctx
def connectors_check(ctx: Ctx, timeout: float) -> None:
    """Connect to every target database and check its tables; exit 1 naming the field of each failure."""
    from connectors.health import check_target
    from connectors.targets import target_refusal
    from services.safetext import mask_secrets

    if not ctx.config.connectors:
        click.echo("no connectors configured")
        return
    guard = ctx.outbound_guard()
    failed = 0
    for n, c in ctx.config.connectors.items():
        problem = target_refusal(c.url, guard) or check_target(c.kind, c.url, timeout)
        if problem:
            failed += 1
            click.echo(f"connectors.{n}.url: {mask_secrets(problem)}", err=True)
        else:
            click.echo(f"{n}: ok ({c.kind})")
    if failed:
        sys.exit(1)


COMMANDS = [connectors_group]
