"""``vlwatch purge`` (per-source retention) and ``vlwatch forget`` (a person's request): delete images, their
results, events, deliveries, objects and snapshot links, with an audit row (``services.retention``)."""

from __future__ import annotations

import json
from typing import Optional

import click

from services.cli.context import Ctx, parse_time, pass_ctx


def _report(what: str, removal, dry_run: bool) -> None:  # noqa: ANN001
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{what}: {verb} {json.dumps(removal.as_dict(), sort_keys=True)}")


@click.command()
@click.option("--dry-run", is_flag=True, help="Count what would go; change nothing.")
@pass_ctx
def purge(ctx: Ctx, dry_run: bool) -> None:
    """Delete images older than their source's retain_days (YAML), with everything derived from them."""
    from services.retention import purge as do_purge

    done = do_purge(ctx.db_url, ctx.config, ctx.store(ensure_bucket=False), dry_run=dry_run)
    if not done:
        click.echo("no source has retain_days set; nothing to purge")
    for source, removal in done.items():
        _report(source, removal, dry_run)


@click.command()
@click.option("--source", required=True)
@click.option("--key", default=None, help="One object key (every version of it).")
@click.option("--before", default=None, help="ISO time: images captured (else uploaded) before it.")
@click.option("--dry-run", is_flag=True, help="Count what would go; change nothing.")
@pass_ctx
def forget(ctx: Ctx, source: str, key: Optional[str], before: Optional[str], dry_run: bool) -> None:
    """Delete one source's images by key or by time, with everything derived from them (a person's request)."""
    from services.retention import forget as do_forget

    if (key is None) == (before is None):
        raise click.UsageError("give exactly one of --key and --before")
    removal = do_forget(ctx.db_url, ctx.config, ctx.store(ensure_bucket=False), source, key,
                        parse_time(before) if before else None, dry_run)
    _report(source, removal, dry_run)


COMMANDS = [purge, forget]
