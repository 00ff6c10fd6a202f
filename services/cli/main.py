"""The ``vlwatch`` group and its commands, by domain: database, ingestion, work, results (and the API that serves
them), access tokens, retention, delivery (webhooks and connectors), demo, model tools and evaluation (eval,
reprocess, diff).

Everything a command prints for a person goes through ``services.safetext.mask_secrets`` (its messages and every
log line), and a database that is missing, unmigrated or unreachable is an error saying what to do, not a traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from services.cli import (
    connectors, db, delivery, demo, evaluate, ingest, model, results, retention, serve, tokens, webhooks, work,
)
from services.safetext import MaskingFormatter, mask_secrets


class Main(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            exc.message = mask_secrets(exc.message)
            raise
        except Exception as exc:
            if not is_database_error(exc):
                raise
            raise click.ClickException(database_problem(exc)) from None


def is_database_error(exc: Exception) -> bool:
    """SQLAlchemy's OperationalError or ProgrammingError. Only a command that imported SQLAlchemy can raise one, so
    the check looks it up instead of importing it: ``vlwatch jobs --help`` and commands without SQL never pay for
    SQLAlchemy's import (about 0.25 s of CPU, bench/cli_start.py)."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    return sa_exc is not None and isinstance(exc, (sa_exc.OperationalError, sa_exc.ProgrammingError))


def database_problem(exc: Exception) -> str:
    """What to do about a database error met by a command: migrate, or reach the server."""
    detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lowered = detail.lower()
    if "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered):
        return f"the database has no vlwatch tables yet ({detail}): run `vlwatch db upgrade` first"
    if "unable to open database file" in lowered:
        return ("no database here yet (the SQLite file under VLWATCH_DATA_DIR cannot be opened): "
                "run `vlwatch db upgrade` first")
    return mask_secrets(f"cannot use the database ({detail}); check VLWATCH_DATABASE_URL and that the server is running")


@click.group(cls=Main)
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """vlwatch: vision analytics for warehouse and security images."""
    handler = logging.StreamHandler()
    handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING - 10 * verbose, handlers=[handler])


for module in (db, ingest, work, delivery, results, serve, tokens, retention, webhooks, connectors, demo, model,
               evaluate):
    for command in module.COMMANDS:
        main.add_command(command)
