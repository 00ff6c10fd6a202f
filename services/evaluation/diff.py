"""What changed between two runs, image by image: barcodes gained and lost, text lines changed (with their edit
distance), gained and lost, objects matched by IoU and gained or lost, check answers changed.

A side of the comparison is an evaluation run or a selection of jobs (``select_side``):

| selector | what |
| --- | --- |
| ``eval:N`` or ``N`` | evaluation run N (its clean pass), images by file name |
| ``current`` | every image's latest succeeded job per profile (the ``current_*`` views), images by key |
| ``jobs:SINCE..UNTIL`` | per image and profile, the latest succeeded job finished in [SINCE, UNTIL); either end may be left out |
| ``lineage:KEY=VALUE`` | per image and profile, the latest succeeded job whose lineage names VALUE under KEY (``version``, ``checkpoint_digest``, ``model_id``, ``prompt``, or a setting such as ``scene_pass``) |

Job selections can be narrowed to a source. Images present on one side only are listed as such.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import Any, Callable, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.evaluation.metrics import match_lines, normalise
from services.evaluation.store import load_predictions
from services.schema import RESULT_TABLES, AnswerRow, Image, Job, JobStatus, Source

IOU = 0.5
Side = dict[str, dict[str, Any]]  # image -> {"barcodes": rows, "text_lines": rows, "objects": rows, "answers"?}


class SelectorError(ValueError):
    pass


# ---- the comparison -------------------------------------------------------------------------------------------
def iou(a: dict[str, float], b: dict[str, float]) -> float:
    ix = max(0.0, min(a["x2"], b["x2"]) - max(a["x1"], b["x1"]))
    iy = max(0.0, min(a["y2"], b["y2"]) - max(a["y1"], b["y1"]))
    inter = ix * iy
    union = (a["x2"] - a["x1"]) * (a["y2"] - a["y1"]) + (b["x2"] - b["x1"]) * (b["y2"] - b["y1"]) - inter
    return inter / union if union > 0 else 0.0


def match_objects(a: list[dict], b: list[dict]) -> tuple[list[tuple[int, int, float]], list[int], list[int]]:
    """Pairs of the same label with IoU >= 0.5, highest IoU first, one-to-one; then the unmatched of each side."""
    pairs = sorted(((iou(x, y), i, j) for i, x in enumerate(a) for j, y in enumerate(b)
                    if x["label"] == y["label"]), key=lambda t: (-t[0], t[1], t[2]))
    used_a: set[int] = set()
    used_b: set[int] = set()
    matched = []
    for v, i, j in pairs:
        if v >= IOU and i not in used_a and j not in used_b:
            matched.append((i, j, round(v, 4)))
            used_a.add(i)
            used_b.add(j)
    return matched, [i for i in range(len(a)) if i not in used_a], [j for j in range(len(b)) if j not in used_b]


def diff_image(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The changes from ``a`` to ``b`` for one image; empty lists where nothing changed."""
    codes_a = Counter((r["format"], r["value"]) for r in a.get("barcodes", []))
    codes_b = Counter((r["format"], r["value"]) for r in b.get("barcodes", []))
    lines_a = [normalise(r["text"]) for r in a.get("text_lines", [])]
    lines_b = [normalise(r["text"]) for r in b.get("text_lines", [])]
    matched_lines = match_lines(lines_a, lines_b)
    used = {j for _, j, _ in matched_lines if j is not None}
    objs_a, objs_b = a.get("objects", []), b.get("objects", [])
    matched, lost, gained = match_objects(objs_a, objs_b)
    answers_a, answers_b = a.get("answers") or {}, b.get("answers") or {}
    return {
        "barcodes_gained": sorted(f"{f} {v}" for f, v in (codes_b - codes_a).elements()),
        "barcodes_lost": sorted(f"{f} {v}" for f, v in (codes_a - codes_b).elements()),
        "text_changed": [{"from": lines_a[i], "to": lines_b[j], "distance": d}
                         for i, j, d in matched_lines if j is not None and d > 0],
        "text_gained": sorted(lines_b[j] for j in range(len(lines_b)) if j not in used),
        "text_lost": sorted(lines_a[i] for i, j, _ in matched_lines if j is None),
        "objects_matched": len(matched),
        "objects_gained": sorted(objs_b[j]["label"] for j in gained),
        "objects_lost": sorted(objs_a[i]["label"] for i in lost),
        "answers_changed": {k: {"from": (answers_a.get(k) or {}).get("value"),
                                "to": (answers_b.get(k) or {}).get("value")}
                            for k in sorted(set(answers_a) | set(answers_b))
                            if (answers_a.get(k) or {}).get("value") != (answers_b.get(k) or {}).get("value")},
    }


CHANGE_KEYS = ("barcodes_gained", "barcodes_lost", "text_changed", "text_gained", "text_lost", "objects_gained",
               "objects_lost", "answers_changed")


def diff_sides(a: Side, b: Side) -> list[dict[str, Any]]:
    """One entry per image with a change (or present on one side only), sorted by image."""
    out = []
    for image in sorted(set(a) | set(b)):
        if image not in a or image not in b:
            out.append({"image": image, "only_in": "a" if image in a else "b"})
            continue
        d = diff_image(a[image], b[image])
        if any(d[k] for k in CHANGE_KEYS):
            out.append({"image": image} | d)
    return out


# ---- the sides ------------------------------------------------------------------------------------------------
def select_side(session: Session, selector: str, source: Optional[str] = None,
                parse_time: Callable[[str], datetime] = datetime.fromisoformat) -> Side:
    kind, _, arg = selector.partition(":")
    if selector.isdigit() or kind == "eval":
        try:
            return load_predictions(session, int(arg if kind == "eval" else selector))
        except ValueError:
            raise SelectorError(f"{selector!r}: eval:N takes a run number") from None
    if selector == "current":
        return job_side(session, source, lambda job: True)
    if kind == "jobs":
        since_text, sep, until_text = arg.partition("..")
        if not sep:
            raise SelectorError(f"{selector!r}: write jobs:SINCE..UNTIL (either end may be empty)")
        since = parse_time(since_text) if since_text else None
        until = parse_time(until_text) if until_text else None
        return job_side(session, source, lambda job: job.finished_at is not None
                        and (since is None or job.finished_at >= since) and (until is None or job.finished_at < until))
    if kind == "lineage":
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise SelectorError(f"{selector!r}: write lineage:KEY=VALUE, e.g. lineage:version=3.1.1")
        return job_side(session, source, lambda job: _lineage_has(job.lineage, key, value))
    raise SelectorError(f"{selector!r}: expected eval:N, N, current, jobs:SINCE..UNTIL or lineage:KEY=VALUE")


def _lineage_has(lineage: Optional[list[dict[str, Any]]], key: str, value: str) -> bool:
    for entry in lineage or []:
        for found in (entry.get(key), (entry.get("settings") or {}).get(key)):
            if found is not None and (found == value or json.dumps(found) == value or str(found) == value):
                return True
    return False


def job_side(session: Session, source: Optional[str], keep: Callable[[Any], bool]) -> Side:
    """Per image and profile the latest succeeded job that ``keep`` accepts, and its rows, by image key: the result
    rows by kind and ``answers`` (check -> ``value``, ``status``), which ``diff_image`` compares as it does for
    evaluation runs."""
    query = (select(Job.id, Job.image_id, Job.profile, Job.finished_at, Job.lineage, Image.key)
             .join(Image, Image.id == Job.image_id).where(Job.status == JobStatus.succeeded.value)
             .order_by(Job.id))
    if source is not None:
        query = query.join(Source, Source.id == Image.source_id).where(Source.name == source)
    latest: dict[tuple[int, str], Any] = {}
    for job in session.execute(query):
        if keep(job):
            latest[(job.image_id, job.profile)] = job  # ordered by id: the newest kept job wins
    keys = {job.id: job.key for job in latest.values()}
    side: Side = {key: {kind: [] for kind in RESULT_TABLES} for key in keys.values()}
    ids = list(keys)
    for kind, table in RESULT_TABLES.items():
        for i in range(0, len(ids), 500):
            for row in session.execute(select(table).where(table.job_id.in_(ids[i:i + 500])).order_by(table.id)
                                       ).scalars():
                side[keys[row.job_id]][kind].append(
                    {c.name: getattr(row, c.name) for c in table.__table__.columns})
    for i in range(0, len(ids), 500):
        for a in session.execute(select(AnswerRow).where(AnswerRow.job_id.in_(ids[i:i + 500]))).scalars():
            value = next((v for v in (a.value_bool, a.value_number, a.value_text) if v is not None), None)
            side[keys[a.job_id]].setdefault("answers", {})[a.check_name] = {"value": value, "status": a.status}
    return side


def format_table(changes: list[dict[str, Any]]) -> str:
    """The diff as lines a person reads: one block per image."""
    if not changes:
        return "no changes"
    lines = []
    for c in changes:
        if "only_in" in c:
            lines.append(f"{c['image']}: only in {c['only_in'].upper()}")
            continue
        lines.append(f"{c['image']}:")
        for key in ("barcodes_gained", "barcodes_lost", "text_gained", "text_lost", "objects_gained",
                    "objects_lost"):
            if c[key]:
                lines.append(f"  {key.replace('_', ' ')}: {', '.join(c[key])}")
        for t in c["text_changed"]:
            lines.append(f"  text changed: {t['from']!r} -> {t['to']!r} (distance {t['distance']})")
        for check, v in c["answers_changed"].items():
            lines.append(f"  answer {check}: {v['from']!r} -> {v['to']!r}")
    return "\n".join(lines)
