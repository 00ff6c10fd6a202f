"""``vlwatch serve``: the HTTP API and the results page (uvicorn), with /metrics and /healthz."""

from __future__ import annotations

import click

from services.cli.context import Ctx, pass_ctx


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--no-auth", is_flag=True, help="Serve without tokens (local use only: anyone reaching the port "
              "sees every source and may upload).")
@click.option("--log-level", default="warning", show_default=True)
@pass_ctx
def serve(ctx: Ctx, host: str, port: int, no_auth: bool, log_level: str) -> None:
    """Serve the JSON API (/api/v1, OpenAPI at /openapi.json) and the results page (/)."""
    import uvicorn

    from services import metrics
    from services.api.app import create_app
    from services.tokens import Authenticator

    if no_auth:
        click.echo("warning: --no-auth: every request is served without a token", err=True)
    queues = sorted({p.queue_name for p in ctx.config.profiles.values()} | {"cpu", "gpu"})
    metrics.add_state(metrics.JobsState(ctx.db_url, ctx.settings.broker_url, queues))
    metrics.add_state(metrics.DeliveriesState(ctx.db_url))
    app = create_app(ctx.settings, ctx.config, ctx.store(ensure_bucket=False), Authenticator(ctx.db_url, no_auth))
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


COMMANDS = [serve]
