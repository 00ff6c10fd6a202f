"""Knowing how good it is: ``eval`` (a labelled set through a profile's analyzers, scored, stored, reported),
``reprocess`` (new jobs for images already analysed, earlier results kept) and ``diff`` (what changed between two
evaluation runs or two selections of jobs). docs/evaluation.md describes all three."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import click

from services.cli.context import Ctx, parse_time, pass_ctx


def build_profile_analyzers(ctx: Ctx, profile_name: str) -> list[tuple[str, Any]]:
    """The analyzers of ``profile_name``, built as a worker builds them (the same options, the same registry)."""
    from model.analyzers import AnalyzerUnavailable
    from model.registry import build_analyzer
    from workers.runtime import analyzer_options

    profile = ctx.config.profiles[profile_name]
    out = []
    for name in profile.analyzers:
        try:
            out.append((name, build_analyzer(name, analyzer_options(name, profile, ctx.settings))))
        except (AnalyzerUnavailable, ValueError) as exc:
            raise click.ClickException(f"profile {profile_name!r}: {exc}") from None
    return out


@click.command("eval")
@click.argument("set_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--profile", default=None, help="Profile whose analyzers run (default: the default profile).")
@click.option("--degrade", default="", help="Comma-separated: blur,dark,noise,jpeg,tilt (or all); each at "
                                            "strengths 1-3.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the degradations' randomness.")
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for report.json and report.html (default: DATA_DIR/eval/run-N).")
@pass_ctx
def eval_command(ctx: Ctx, set_dir: Path, profile: Optional[str], degrade: str, seed: int,
                 out: Optional[Path]) -> None:
    """Score PROFILE on the labelled set in SET_DIR (images + truth.json); store the run; write JSON + HTML."""
    from services.db import session_scope
    from services.evaluation import degrade as deg
    from services.evaluation.report import write_reports
    from services.evaluation.runner import run_set
    from services.evaluation.store import run_document, save_run
    from services.evaluation.truth import TruthError, load_truth
    from services.schema import EvalRun

    profile = profile or ctx.config.profile_name(None)
    if profile not in ctx.config.profiles:
        raise click.BadParameter(f"unknown profile {profile!r} (configured: {', '.join(ctx.config.profiles)})",
                                 param_hint="--profile")
    try:
        degradations = deg.parse_degradations(degrade)
        truth_set = load_truth(set_dir)
    except (deg.DegradeError, TruthError) as exc:
        raise click.ClickException(str(exc)) from None
    analyzers = build_profile_analyzers(ctx, profile)
    ctx.ensure_db()
    passes = run_set(truth_set, analyzers, degradations, seed,
                     progress=lambda what: click.echo(f"eval: {what}", err=True))
    settings = {"degradations": degradations, "seed": seed,
                "levels": {d: list(deg.LEVELS[d]) for d in degradations}}
    doc = run_document(truth_set, profile, analyzers, passes, settings)
    with session_scope(ctx.db_url) as s:
        run_id = save_run(s, doc, passes, None)
    out = out or ctx.settings.data_dir / "eval" / f"run-{run_id}"
    doc = {"run": run_id} | doc
    json_path, html_path = write_reports(doc, out)
    with session_scope(ctx.db_url) as s:
        s.get(EvalRun, run_id).report_dir = str(out)
    _print_summary(doc)
    click.echo(f"run {run_id} stored; wrote {json_path} and {html_path}")


def _print_summary(doc: dict[str, Any]) -> None:
    from services.evaluation.report import curves, scores

    clean = doc["metrics"]["clean"]
    click.echo(f"{doc['set']['name']}: {doc['set']['images']} images, profile {doc['profile']} "
               f"({', '.join(doc['analyzers'])})")
    for label, value in scores(clean):
        click.echo(f"  {label:<32} {value:.4f}")
    if "barcodes" in clean:
        b = clean["barcodes"]
        click.echo(f"  barcodes: {b['decoded']}/{b['symbols']} symbols decoded, {b['wrong_values']} wrong values")
        for fmt, v in b["by_format"].items():
            click.echo(f"    {fmt:<12} {v['decoded']}/{v['symbols']}")
    checks = clean.get("checks")
    if checks and not checks["answered"]:
        click.echo(f"  checks: {checks['labelled']} labelled answers, none answered by this profile's analyzers")
    for label, v in (clean.get("objects") or {}).get("by_label", {}).items():
        click.echo(f"  objects {label:<16} P {v['precision']}  R {v['recall']}  mean IoU {v['mean_iou']}")
    for name, t in doc["timings"]["analyzers"].items():
        click.echo(f"  latency {name:<12} p50 {t['p50_s'] * 1000:.1f} ms  p95 {t['p95_s'] * 1000:.1f} ms")
    if doc["timings"]["images_per_s"]:
        click.echo(f"  {doc['timings']['images_per_s']:.2f} images/s")
    for label, lines in curves(doc).items():
        for name, points in lines.items():
            click.echo(f"  {label} under {name}: " + "  ".join(f"{s}:{v:.3f}" for s, v in points))


@click.command()
@click.option("--source", required=True, help="Source whose analysed images get new jobs.")
@click.option("--since", default=None, help="Only images registered at or after this ISO time.")
@click.option("--profile", default=None, help="Profile of the new jobs (default: the source's profile).")
@pass_ctx
def reprocess(ctx: Ctx, source: str, since: Optional[str], profile: Optional[str]) -> None:
    """Queue new jobs for images of SOURCE already analysed; earlier results stay, the current views switch."""
    from services.db import session_scope
    from services.ingest.register import send_registered
    from services.ingest.reprocess import ReprocessError, queue_reprocess

    when = parse_time(since) if since else None
    ctx.ensure_db()
    try:
        with session_scope(ctx.db_url) as s:
            queued = queue_reprocess(s, ctx.config, source, when, profile)
    except ReprocessError as exc:
        raise click.ClickException(str(exc)) from None
    sent = send_registered(ctx.db_url, queued, ctx.send_job())
    click.echo(f"queued {len(queued)} job(s) for source {source} ({sent} sent)")


@click.command()
@click.argument("run_a")
@click.argument("run_b")
@click.option("--source", default=None, help="Narrow job selections to one source.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def diff(ctx: Ctx, run_a: str, run_b: str, source: Optional[str], as_json: bool) -> None:
    """Per image, what changed from RUN_A to RUN_B: eval:N (or N), current, jobs:SINCE..UNTIL, lineage:KEY=VALUE."""
    from services.db import session_scope
    from services.evaluation.diff import SelectorError, diff_sides, format_table, select_side

    try:
        with session_scope(ctx.db_url) as s:
            a = select_side(s, run_a, source, parse_time)
            b = select_side(s, run_b, source, parse_time)
    except (SelectorError, LookupError) as exc:
        raise click.ClickException(str(exc)) from None
    changes = diff_sides(a, b)
    if as_json:
        click.echo(json.dumps({"a": run_a, "b": run_b, "images_a": len(a), "images_b": len(b), "changes": changes},
                              indent=2))
    else:
        click.echo(f"A = {run_a} ({len(a)} images), B = {run_b} ({len(b)} images): "
                   f"{len(changes)} image(s) changed")
        click.echo(format_table(changes))


COMMANDS = [eval_command, reprocess, diff]
