"""Scores of one pass over a set: barcodes, OCR text, check answers and timings (objects: ``grounding``).

Every function takes pairs of (truth, prediction) per image and returns plain numbers: fractions in 0..1 rounded
to six places (so two runs compare equal), counts as integers. An image that is not labelled for a kind does not
count for it. Timings are kept apart from the scores: they vary between runs, the scores do not.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable, Optional

import numpy as np

Pairs = Iterable[tuple[Optional[list[dict[str, Any]]], list[dict[str, Any]]]]  # (truth or None, predicted rows)


def ratio(num: float, den: float) -> Optional[float]:
    """``num / den`` rounded to six places, None where nothing was counted."""
    return None if den == 0 else round(float(num) / float(den), 6)


# ---- barcodes -------------------------------------------------------------------------------------------------
def barcode_metrics(pairs: Pairs) -> dict[str, Any]:
    """Decode rate: truth symbols read with their format and value (one read per symbol). By value: distinct values
    per image, recall = truth values read / truth values, precision = read values in the truth / values read;
    ``wrong_values`` counts values read that the image does not hold."""
    symbols = decoded = truth_values = pred_values = right_values = 0
    per_format: dict[str, list[int]] = {}
    images = 0
    for truth, pred in pairs:
        if truth is None:
            continue
        images += 1
        want = Counter((t["format"], t["value"]) for t in truth)
        got = Counter((p["format"], p["value"]) for p in pred)
        hit = want & got
        symbols += sum(want.values())
        decoded += sum(hit.values())
        for (fmt, _), n in want.items():
            counts = per_format.setdefault(fmt, [0, 0])
            counts[0] += n
            counts[1] += hit[(fmt, _)]
        tv, pv = {t["value"] for t in truth}, {p["value"] for p in pred}
        truth_values += len(tv)
        pred_values += len(pv)
        right_values += len(tv & pv)
    return {
        "images": images, "symbols": symbols, "decoded": decoded, "decode_rate": ratio(decoded, symbols),
        "recall": ratio(right_values, truth_values), "precision": ratio(right_values, pred_values),
        "wrong_values": pred_values - right_values,
        "by_format": {f: {"symbols": n, "decoded": k, "decode_rate": ratio(k, n)}
                      for f, (n, k) in sorted(per_format.items())},
    }


# ---- OCR ------------------------------------------------------------------------------------------------------
def normalise(text: str) -> str:
    """Lines compare after collapsing runs of white space (OCR engines write one space where type set two)."""
    return re.sub(r"\s+", " ", text).strip()


def match_lines(truth: list[str], pred: list[str]) -> list[tuple[int, Optional[int], int]]:
    """One-to-one matching of truth lines to predicted lines by edit distance (rapidfuzz's Levenshtein), closest
    pairs first; a pair counts only when it shares at least half the truth line. Returns (truth index, predicted
    index or None, edits) per truth line; an unmatched truth line costs its length."""
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    out: dict[int, tuple[Optional[int], int]] = {}
    if truth and pred:
        dist = cdist(truth, pred, scorer=Levenshtein.distance)  # [n_truth, n_pred]
        order = sorted(((int(dist[i, j]), i, j) for i in range(len(truth)) for j in range(len(pred))))
        used: set[int] = set()
        for d, i, j in order:
            if i in out or j in used or d > len(truth[i]) / 2:
                continue
            out[i] = (j, d)
            used.add(j)
    return [(i, *out.get(i, (None, len(truth[i])))) for i in range(len(truth))]


def ocr_metrics(pairs: Pairs) -> dict[str, Any]:
    """Character error rate = edits over truth characters (matched lines: their Levenshtein distance; unread lines:
    their length); exact-line recall = truth lines read exactly (after ``normalise``); line precision = predicted
    lines that exactly match a truth line."""
    images = lines = exact = chars = edits = predicted = 0
    for truth, pred in pairs:
        if truth is None:
            continue
        images += 1
        t = [normalise(x["text"]) for x in truth]
        p = [normalise(x["text"]) for x in pred if normalise(x["text"])]
        matches = match_lines(t, p)
        lines += len(t)
        predicted += len(p)
        chars += sum(len(x) for x in t)
        edits += sum(e for _, _, e in matches)
        exact += sum(1 for _, j, e in matches if j is not None and e == 0)
    return {"images": images, "lines": lines, "predicted_lines": predicted, "exact_lines": exact,
            "cer": ratio(edits, chars), "exact_line_recall": ratio(exact, lines),
            "line_precision": ratio(exact, predicted)}


# ---- check answers --------------------------------------------------------------------------------------------
def answer_matches(expected: Any, value: Any) -> bool:
    """A typed answer equals the truth: numbers by value, words case-insensitively."""
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        try:
            return float(value) == float(expected)
        except (TypeError, ValueError):
            return False
    return str(value).strip().lower() == str(expected).strip().lower()


def check_metrics(pairs: Iterable[tuple[Optional[dict[str, Any]], Optional[dict[str, dict[str, Any]]]]]
                  ) -> dict[str, Any]:
    """Per check and overall: accuracy over the labelled answers and the unparsed rate. ``pred`` maps a check to
    ``{"value", "status"}`` (status ``unparsed`` when the answer did not parse); None where the analyzers of the
    profile answer no checks — then every check counts as unanswered."""
    per: dict[str, Counter] = {}
    answered_any = False
    for truth, pred in pairs:
        if truth is None:
            continue
        answered_any = answered_any or pred is not None
        for check, expected in truth.items():
            c = per.setdefault(check, Counter())
            c["labelled"] += 1
            got = (pred or {}).get(check)
            if got is None:
                c["unanswered"] += 1
            elif got.get("status") == "unparsed":
                c["unparsed"] += 1
            elif answer_matches(expected, got.get("value")):
                c["correct"] += 1
    total = sum(per.values(), Counter())
    summary = lambda c: {"labelled": c["labelled"], "correct": c["correct"], "unparsed": c["unparsed"],  # noqa: E731
                         "unanswered": c["unanswered"], "accuracy": ratio(c["correct"], c["labelled"]),
                         "unparsed_rate": ratio(c["unparsed"], c["labelled"])}
    return {"answered": answered_any, **summary(total), "by_check": {k: summary(v) for k, v in sorted(per.items())}}


# ---- timings --------------------------------------------------------------------------------------------------
def timing_summary(seconds_by_analyzer: dict[str, list[float]], images: int) -> dict[str, Any]:
    """Per analyzer: p50, p95 and mean seconds per image; images/s over the analyzers' summed time."""
    per = {}
    for name, values in seconds_by_analyzer.items():
        a = np.asarray(values, dtype=np.float64)
        per[name] = {"p50_s": float(np.percentile(a, 50)), "p95_s": float(np.percentile(a, 95)),
                     "mean_s": float(a.mean()), "images": len(a)}
    total = sum(sum(v) for v in seconds_by_analyzer.values())
    return {"images_per_s": images / total if total else None, "analyzers": per}
