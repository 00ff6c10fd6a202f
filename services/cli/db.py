"""``vlwatch db``: schema migrations (Alembic)."""

from __future__ import annotations

import click

from services.cli.context import Ctx, pass_ctx


@click.group("db")
def db_group() -> None:
    """Schema migrations (Alembic)."""


@db_group.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Ctx) -> None:
    """Apply every migration up to the newest revision."""
    from services.migrate import current

    ctx.ensure_db()
    click.echo(f"database at revision {current(ctx.db_url)}")


COMMANDS = [db_group]
