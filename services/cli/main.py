"""The ``vlwatch`` group and its commands, by domain: database, ingestion, work, results (and the API that serves
them), access tokens, retention, delivery (webhooks and connectors), demo, model tools and evaluation (eval,
reprocess, diff)."""

from __future__ import annotations

import logging

import click

from services.cli import (
    connectors, db, delivery, demo, evaluate, ingest, model, results, retention, serve, tokens, webhooks, work,
)


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """vlwatch: vision analytics for warehouse and security images."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for module in (db, ingest, work, delivery, results, serve, tokens, retention, webhooks, connectors, demo, model,
               evaluate):
    for command in module.COMMANDS:
        main.add_command(command)
