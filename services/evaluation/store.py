"""An evaluation run as one document (what ran, the scores per pass, the timings) and as SQL rows (``eval_runs``,
``eval_images``), so runs can be listed, compared and diffed.

The document's ``metrics`` are the compared part: the same set, analyzers and settings give the same ``metrics``
to the last digit. Timings live under ``timings`` only.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from services.evaluation.runner import Pass
from services.evaluation.truth import TruthSet
from services.schema import EvalImage, EvalRun, utcnow


def run_document(truth_set: TruthSet, profile: str, analyzers: Sequence[tuple[str, Any]], passes: list[Pass],
                 settings: dict[str, Any]) -> dict[str, Any]:
    """Everything the JSON report, the HTML report and the SQL row hold."""
    clean = passes[0]
    degraded: dict[str, dict[str, Any]] = {}
    for p in passes[1:]:
        degraded.setdefault(p.condition, {})[str(p.strength)] = {"level": p.level, **p.metrics}
    return {
        "set": {"name": truth_set.name, "path": str(truth_set.folder), "digest": truth_set.digest,
                "images": len(truth_set.images)},
        "profile": profile,
        "analyzers": [name for name, _ in analyzers],
        "lineage": [a.lineage().as_dict() for _, a in analyzers],
        "settings": settings,
        "metrics": {"clean": clean.metrics, "degraded": degraded},
        "timings": clean.timings,
        "images": [{"file_name": o.file_name, "error": o.error,
                    "missed_barcodes": _missed(o.truth.barcodes, o.predictions.get("barcodes", [])),
                    "wrong_barcodes": _wrong(o.truth.barcodes, o.predictions.get("barcodes", []))}
                   for o in clean.images],
    }


def _missed(truth: Optional[list[dict]], pred: list[dict]) -> list[str]:
    if truth is None:
        return []
    got = {(p["format"], p["value"]) for p in pred}
    return [f"{t['format']} {t['value']}" for t in truth if (t["format"], t["value"]) not in got]


def _wrong(truth: Optional[list[dict]], pred: list[dict]) -> list[str]:
    if truth is None:
        return []
    values = {t["value"] for t in truth}
    return [f"{p['format']} {p['value']}" for p in pred if p["value"] not in values]


def save_run(session: Session, doc: dict[str, Any], passes: list[Pass], report_dir: Optional[str]) -> int:
    """Insert the run and every image's predictions under every condition; returns the run id."""
    conn = session.connection()
    run_id = conn.execute(insert(EvalRun.__table__).returning(EvalRun.__table__.c.id), {
        "set_name": doc["set"]["name"], "set_path": doc["set"]["path"], "set_digest": doc["set"]["digest"],
        "images": doc["set"]["images"], "profile": doc["profile"], "analyzers": doc["analyzers"],
        "lineage": doc["lineage"], "settings": doc["settings"], "metrics": doc["metrics"],
        "timings": doc["timings"], "report_dir": report_dir, "created_at": utcnow(),
    }).scalar_one()
    rows = [{"run_id": run_id, "file_name": o.file_name, "condition": p.condition, "strength": p.strength,
             "predictions": {**o.predictions, **({"answers": o.answers} if o.answers is not None else {})},
             "error": o.error} for p in passes for o in p.images]
    if rows:
        conn.execute(insert(EvalImage.__table__), rows)
    return int(run_id)


def load_predictions(session: Session, run_id: int, condition: str = "clean", strength: int = 0
                     ) -> dict[str, dict[str, Any]]:
    """file name -> predictions of run ``run_id`` under ``condition``; raises LookupError for an unknown run."""
    if session.get(EvalRun, run_id) is None:
        raise LookupError(f"no evaluation run {run_id}")
    rows = session.execute(select(EvalImage.file_name, EvalImage.predictions).where(
        EvalImage.run_id == run_id, EvalImage.condition == condition, EvalImage.strength == strength)).all()
    return {name: predictions for name, predictions in rows}
