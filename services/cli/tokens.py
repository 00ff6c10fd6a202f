"""``vlwatch tokens``: bearer tokens of the HTTP API, the results page and the bucket-notification listener."""

from __future__ import annotations

from typing import Optional

import click

from services.cli.context import Ctx, pass_ctx


@click.group("tokens")
def tokens_group() -> None:
    """API tokens (stored hashed; shown once when made)."""


@tokens_group.command("add")
@click.argument("name")
@click.option("--sources", default=None, help="Comma-separated source names it may see (default: every source).")
@click.option("--upload", is_flag=True, help="May also ask for presigned uploads and post bucket notifications.")
@pass_ctx
def tokens_add(ctx: Ctx, name: str, sources: Optional[str], upload: bool) -> None:
    """Make token NAME and print it (the only time it is shown)."""
    from services.db import session_scope
    from services.tokens import TokenError, add_token

    scope = [s.strip() for s in sources.split(",") if s.strip()] if sources is not None else None
    if scope is not None and not scope:
        raise click.BadParameter("name at least one source, or leave --sources out for every source")
    with session_scope(ctx.db_url) as s:
        try:
            token = add_token(s, name, scope, upload)
        except TokenError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(token)


@tokens_group.command("list")
@pass_ctx
def tokens_list(ctx: Ctx) -> None:
    """Tokens with their scope (never the tokens themselves)."""
    from services.db import session_scope
    from services.tokens import list_tokens

    with session_scope(ctx.db_url) as s:
        for t in list_tokens(s):
            state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
            scope = ",".join(t.sources) if t.sources is not None else "*"
            click.echo(f"{t.name:<20} {t.hint}...  sources={scope}  upload={'yes' if t.can_upload else 'no'}  "
                       f"{state}")


@tokens_group.command("revoke")
@click.argument("name")
@pass_ctx
def tokens_revoke(ctx: Ctx, name: str) -> None:
    """Revoke token NAME (refused from the next request on)."""
    from services.db import session_scope
    from services.tokens import TokenError, revoke_token

    with session_scope(ctx.db_url) as s:
        try:
            revoke_token(s, name)
        except TokenError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"revoked {name}")


COMMANDS = [tokens_group]
