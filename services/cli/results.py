"""Reading results: ``jobs`` (recent jobs, status, timings, reasons), ``results`` (one image's rows) and
``render`` (one image with its boxes drawn)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from services.cli.context import Ctx, pass_ctx


@click.command()
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed"]))
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@pass_ctx
def jobs(ctx: Ctx, status: Optional[str], limit: int) -> None:
    """Recent jobs with their status, timings and errors."""
    from services.db import session_scope
    from services.queries import job_counts, list_jobs

    with session_scope(ctx.db_url) as s:
        counts = job_counts(s)
        rows = list_jobs(s, status, limit)
        click.echo("  ".join(f"{k}={v}" for k, v in counts.items()))
        for job, image in rows:
            took = sum((job.timings or {}).values())
            click.echo(f"{job.id:>6}  {job.status:<9}  {image.key:<40}  {took:6.2f}s  {job.error or ''}")


@click.command()
@click.argument("image")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def results(ctx: Ctx, image: str, as_json: bool) -> None:
    """Results of IMAGE (id or object key)."""
    from services.db import session_scope
    from services.queries import NotFound, find_image, image_results

    with session_scope(ctx.db_url) as s:
        try:
            res = image_results(s, find_image(s, image))
        except NotFound as exc:
            raise click.ClickException(str(exc)) from None
        job = res.job
        out = {"image": {"id": res.image.id, "key": res.image.key, "width": res.image.width,
                         "height": res.image.height},
               "job": None if job is None else {"id": job.id, "status": job.status, "error": job.error,
                                                "timings": job.timings},
               "results": res.rows, "answers": res.answers}
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
        return
    click.echo(f"{out['image']['key']}  ({out['image']['width']}x{out['image']['height']})  "
               f"job {out['job'] and out['job']['id']}: {out['job'] and out['job']['status']}")
    if job is not None and job.error:
        click.echo(f"  error: {job.error}")
    for kind, rows in res.rows.items():
        for r in rows:
            what = r.get("value") or r.get("text") or r.get("label")
            box = ", ".join(f"{r[c]:.0f}" for c in ("x1", "y1", "x2", "y2"))
            score = "" if r.get("score") is None else f"  {r['score']:.2f}"
            extra = f" {r['format']}" if kind == "barcodes" else ""
            click.echo(f"  {kind:<10}{extra}  {what!s:<40}  [{box}]{score}")
    for a in res.answers:
        value = next((a[c] for c in ("value_bool", "value_number", "value_text") if a[c] is not None), None)
        passed = {True: "passed", False: "FAILED", None: ""}[a["passed"]]
        click.echo(f"  check     {a['check_name']:<20} {a['status']:<11} {value!s:<24} {passed}  "
                   f"raw: {(a['raw_text'] or '')[:60]!r}")


@click.command()
@click.argument("image")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@pass_ctx
def render(ctx: Ctx, image: str, output: Path) -> None:
    """Draw IMAGE's boxes and labels into a PNG."""
    from services.queries import NotFound
    from services.render import annotate_image

    try:
        annotate_image(ctx.db_url, ctx.store(), image, output, ctx.settings)
    except NotFound as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {output}")


COMMANDS = [jobs, results, render]
