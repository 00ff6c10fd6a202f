"""One evaluation run: every image of a set through a profile's analyzers, clean and then under each degradation at
each strength, scored per pass.

In process, not through the queue: the analyzers are the production ones (``model.registry.build_analyzer`` with
the options a worker gives them, built by the CLI), each image is decoded by ``model.decode`` as a worker decodes
it, and each analyzer is timed on one image at a time, so the latencies are per image and no broker, database or
object store adds to them or to the run's cost. Nothing here depends on wall-clock time except the timings, which
stay out of the scores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from model.decode import decode_image
from services.evaluation import degrade as deg
from services.evaluation.grounding import grounding_metrics
from services.evaluation.metrics import barcode_metrics, check_metrics, ocr_metrics, timing_summary
from services.evaluation.truth import ImageTruth, TruthSet

MAX_BYTES, MAX_PIXELS = 200 * 1024 * 1024, 200_000_000  # the set is the operator's own: decode what it holds


@dataclass
class ImageOutcome:
    file_name: str
    truth: ImageTruth  # moved with the image where a degradation moves boxes (tilt)
    predictions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # kind -> rows, as in SQL
    answers: Optional[dict[str, dict[str, Any]]] = None  # check -> {"value", "status"}; None: no checks answered
    seconds: dict[str, float] = field(default_factory=dict)  # analyzer -> seconds for this image
    error: Optional[str] = None


@dataclass
class Pass:
    """The whole set under one condition: ``clean``, or a degradation at a strength (1..3)."""

    condition: str
    strength: int
    level: Optional[float]  # the degradation's parameter (sigma, gain, quality, degrees)
    images: list[ImageOutcome]
    kinds: set[str]  # result kinds the analyzers produced (objects, text_lines, barcodes) plus "checks"
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)


def run_set(truth_set: TruthSet, analyzers: Sequence[tuple[str, Any]], degradations: Sequence[str] = (),
            seed: int = 0, progress: Optional[Callable[[str], None]] = None) -> list[Pass]:
    """The clean pass, then one pass per degradation and strength, each scored."""
    decoded = {}
    for image in truth_set.images:
        data = truth_set.path(image).read_bytes()
        decoded[image.file_name] = decode_image(data, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS).image
    conditions: list[tuple[str, int]] = [("clean", 0)] + [(d, s) for d in degradations for s in (1, 2, 3)]
    passes = []
    for condition, strength in conditions:
        if progress:
            progress(condition if not strength else f"{condition} {strength}")
        outcomes = []
        for image in truth_set.images:
            picture, truth = decoded[image.file_name], image
            if strength:
                picture, truth = deg.degrade(picture, image, condition, strength, seed)
            outcomes.append(analyze_one(picture, truth, analyzers))
        kinds = {k for o in outcomes for k in o.predictions} | ({"checks"} if any(o.answers is not None
                                                                              for o in outcomes) else set())
        p = Pass(condition, strength, deg.LEVELS[condition][strength - 1] if strength else None, outcomes, kinds)
        p.metrics = score(p)
        p.timings = timing_summary({name: [o.seconds[name] for o in outcomes if name in o.seconds]
                                    for name, _ in analyzers}, len(outcomes))
        passes.append(p)
    return passes


def analyze_one(picture: Any, truth: ImageTruth, analyzers: Sequence[tuple[str, Any]]) -> ImageOutcome:
    out = ImageOutcome(truth.file_name, truth)
    for name, analyzer in analyzers:
        t = time.perf_counter()
        try:
            (result,) = analyzer.analyze([picture])
        except Exception as exc:  # noqa: BLE001 - one image that breaks an engine is recorded, the run goes on
            out.error = f"{name}: {type(exc).__name__}: {exc}"
            continue
        finally:
            out.seconds[name] = time.perf_counter() - t
        det = result.detections
        out.predictions.setdefault(det.kind, []).extend({"analyzer": name} | r for r in det.to_rows())
        answers = result_answers(result)
        if answers is not None:
            out.answers = (out.answers or {}) | answers
    return out


def result_answers(result: Any) -> Optional[dict[str, dict[str, Any]]]:
    """The typed answers of the checks analyzer (``vl2-ask``; ``model.vl2.ask.CheckAnswer``): check name ->
    ``value``, ``status``, ``raw``. None for an analyzer that answers no checks: check accuracy then counts every
    labelled check as unanswered."""
    if result.lineage.analyzer != "vl2-ask":
        return None
    return {a.check.name: {"value": a.value, "status": a.status, "raw": a.raw} for a in result.answers}


def score(p: Pass) -> dict[str, Any]:
    """The pass's scores for the kinds its analyzers produce."""
    out: dict[str, Any] = {}
    if "barcodes" in p.kinds:
        out["barcodes"] = barcode_metrics((o.truth.barcodes, o.predictions.get("barcodes", [])) for o in p.images)
    if "text_lines" in p.kinds:
        out["text_lines"] = ocr_metrics((o.truth.text_lines, o.predictions.get("text_lines", [])) for o in p.images)
    if "objects" in p.kinds:
        out["objects"] = grounding_metrics((o.truth.objects, o.predictions.get("objects", [])) for o in p.images)
    if any(o.truth.checks for o in p.images):
        out["checks"] = check_metrics((o.truth.checks, o.answers) for o in p.images)
    out["errors"] = sum(1 for o in p.images if o.error)
    return out
