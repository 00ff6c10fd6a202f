"""``vlwatch db``: schema migrations (Alembic) and the analysts' read-only role."""

from __future__ import annotations

import os
import re
from typing import Optional

import click

from services.cli.context import Ctx, pass_ctx

ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
HIDDEN_TABLES = ("api_tokens",)  # hashes of credentials: not for analysts


@click.group("db")
def db_group() -> None:
    """Schema migrations (Alembic) and database roles."""


@db_group.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Ctx) -> None:
    """Apply every migration up to the newest revision."""
    from services.migrate import current

    ctx.ensure_db()
    click.echo(f"database at revision {current(ctx.db_url)}")


def grant_readonly(db_url: str, role: str, password: Optional[str] = None) -> list[str]:
    """Make (or update) PostgreSQL role ``role`` able to log in and SELECT every table and view of the schema,
    those the migrating user creates later included (default privileges), and nothing else: no writes, no DDL,
    transactions read-only by default; ``api_tokens`` stays hidden. Returns the statements run."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from services.db import get_engine, session_scope
    from services.tokens import audit

    if not ROLE_NAME.match(role):
        raise click.BadParameter(f"{role!r}: a role name is lower-case letters, digits and _", param_hint="ROLE")
    url = make_url(db_url)
    if url.get_backend_name() != "postgresql":
        raise click.ClickException("grant-readonly needs PostgreSQL (SQLite has no roles)")
    login = f"LOGIN PASSWORD '{password.replace(chr(39), chr(39) * 2)}'" if password else "LOGIN"
    statements = [
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE \"{role}\"; "
        f"END IF; END $$",
        f'ALTER ROLE "{role}" {login} NOSUPERUSER NOCREATEDB NOCREATEROLE',
        f'ALTER ROLE "{role}" SET default_transaction_read_only = on',
        f'GRANT CONNECT ON DATABASE "{url.database}" TO "{role}"',
        f'GRANT USAGE ON SCHEMA public TO "{role}"',
        f'REVOKE CREATE ON SCHEMA public FROM "{role}"',
        f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"',
        f'ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO "{role}"',
        *(f'REVOKE ALL ON TABLE {t} FROM "{role}"' for t in HIDDEN_TABLES),
    ]
    with get_engine(db_url).begin() as conn:
        for stmt in statements:
            conn.execute(text(stmt))
    with session_scope(db_url) as s:
        audit(s, "grant-readonly", {"role": role, "password": bool(password)}, {})
    return [s.replace(password, "***") if password else s for s in statements]


@db_group.command("grant-readonly")
@click.argument("role")
@click.option("--password-env", default=None, metavar="VAR",
              help="Set the role's password from environment variable VAR (else it logs in by other means).")
@pass_ctx
def db_grant_readonly(ctx: Ctx, role: str, password_env: Optional[str]) -> None:
    """Make ROLE a PostgreSQL login that can read every table and view and change nothing."""
    password = None
    if password_env:
        password = os.environ.get(password_env)
        if not password:
            raise click.ClickException(f"environment variable {password_env} is empty or not set")
    for stmt in grant_readonly(ctx.db_url, role, password):
        click.echo(stmt)


COMMANDS = [db_group]
