"""``vlwatch webhooks``: subscriptions (Standard Webhooks signatures), their state, and replay."""

from __future__ import annotations

from typing import Optional

import click

from services.cli.context import Ctx, parse_time, pass_ctx


@click.group("webhooks")
def webhooks_group() -> None:
    """Webhook subscriptions (Standard Webhooks signatures)."""


@webhooks_group.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--event", "events", multiple=True, default=("job.succeeded", "job.failed"), show_default=True)
@click.option("--secret", default=None, help="whsec_...; generated when omitted.")
@pass_ctx
def webhooks_add(ctx: Ctx, name: str, url: str, events: tuple[str, ...], secret: Optional[str]) -> None:
    """Subscribe URL to events; a URL whose host is not a public address is refused unless allowed by
    VLWATCH_OUTBOUND_ALLOW."""
    from pydantic import ValidationError

    from connectors.webhooks import add_subscription
    from services.config import WebhookConfig
    from services.db import session_scope
    from services.safetext import mask_secrets

    try:
        WebhookConfig(name=name, url=url, events=events, secret=secret)
    except ValidationError as exc:  # each message names the field, never the value given
        raise click.ClickException("; ".join(f"{e['loc'][0]}: {e['msg'].removeprefix('Value error, ')}"
                                             for e in exc.errors())) from None
    refused = ctx.outbound_guard().check_url(url)
    if refused:
        raise click.ClickException(f"{mask_secrets(url)}: {refused}")
    with session_scope(ctx.db_url) as s:
        sub = add_subscription(s, name, url, list(events), secret)
        click.echo(f"added {sub.name} -> {mask_secrets(sub.url)}\nsecret: {sub.secret}")


@webhooks_group.command("list")
@pass_ctx
def webhooks_list(ctx: Ctx) -> None:
    from connectors.webhooks import list_subscriptions, subscription_stats
    from services.db import session_scope
    from services.safetext import mask_secrets

    with session_scope(ctx.db_url) as s:
        for sub in list_subscriptions(s):
            stats = subscription_stats(s, sub.id)
            state = "active" if sub.active else "paused"
            click.echo(f"{sub.name:<16} {state:<7} {mask_secrets(sub.url)}  events={','.join(sub.event_types)}  "
                       + " ".join(f"{k}={v}" for k, v in stats.items()))


@webhooks_group.command("replay")
@click.option("--name", default=None, help="Only this subscription.")
@click.option("--since", default=None, help="ISO time: only events created since then.")
@click.option("--all", "everything", is_flag=True, help="Delivered ones too, not only dead-lettered.")
@pass_ctx
def webhooks_replay(ctx: Ctx, name: Optional[str], since: Optional[str], everything: bool) -> None:
    """Re-send dead-lettered deliveries (or all, with --all), keeping each webhook-id."""
    from connectors.webhooks import replay
    from services.db import session_scope

    when = parse_time(since) if since else None
    status = ("dead", "delivered") if everything else ("dead",)
    with session_scope(ctx.db_url) as s:
        n = replay(s, subscription=name, status=status, since=when)
    click.echo(f"{n} delivery(ies) queued again; `vlwatch dispatch` sends them")


COMMANDS = [webhooks_group]
