"""The analyze stage: each profile's analyzers over its jobs' decoded images, as one batch per analyzer.

An image outside the shapes an analyzer accepts fails before it runs; an analyzer that cannot run on this worker
fails its jobs saying so; one that raises on the batch is re-run image by image, so only the image that breaks it
fails. Nothing here renews leases: a heartbeat does that while the batch runs (``workers.lease.Heartbeat``).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any, Collection, Optional

from model.analyzers import limits_of
from services.config import Profile
from workers.limits import explain, out_of_memory
from workers.runtime import Runtime
from workers.work import Work

log = logging.getLogger(__name__)


def live(work: list[Work]) -> list[Work]:
    """The jobs of ``work`` not failed yet."""
    return [w for w in work if w.failure is None]


def analyze(rt: Runtime, work: list[Work], skip: Collection[str] = ()) -> None:
    """Each profile's analyzers over its jobs' images, as one batch per analyzer. ``skip``: analyzers run
    elsewhere (the GPU worker's scheduler runs the VL2 ones, ``workers.gpu``)."""
    by_profile: dict[str, list[Work]] = defaultdict(list)
    for w in live(work):
        by_profile[w.profile].append(w)
    for profile_name, group in by_profile.items():
        profile = rt.config.profiles[profile_name]
        for name in profile.analyzers:
            if name in skip:
                continue
            group = live(group)
            if not group:
                break
            t = time.perf_counter()
            analyzer = load_analyzer(rt, name, profile, group)
            if analyzer is None:
                continue
            inside = _within_limits(analyzer, name, group)
            if not inside:
                continue
            try:
                results = _checked(_call(analyzer, inside), len(inside), name)
            except Exception as exc:  # noqa: BLE001 - isolate the image that breaks the engine
                results = _one_by_one(analyzer, name, inside, exc)
            share = (time.perf_counter() - t) / len(inside)
            for w, r in zip(inside, results):
                w.timings[name] = share
                if isinstance(r, str):
                    w.fail("analyzer_error", r)
                else:
                    w.results.append(r)


def load_analyzer(rt: Runtime, name: str, profile: Profile, group: list[Work]) -> Optional[Any]:
    """The process's analyzer ``name`` as ``profile`` configures it; None after failing the jobs of ``group``
    with the reason it cannot run on this worker."""
    from model.analyzers import AnalyzerUnavailable

    try:
        return rt.analyzer(name, profile)
    except AnalyzerUnavailable as exc:
        for w in group:
            w.fail("analyzer_unavailable", f"analyzer {name} is not available on this worker: {exc}")
    except Exception as exc:  # noqa: BLE001 - a broken engine set-up fails its jobs, not the worker
        log.exception("analyzer %s failed to load", name)
        for w in group:
            w.fail("analyzer_unavailable", f"analyzer {name} failed to load on this worker: {explain(exc)}")
    return None


def _within_limits(analyzer: Any, name: str, group: list[Work]) -> list[Work]:
    """Fail the jobs whose image is outside the shapes ``analyzer`` accepts (before it runs on them); returns
    the others."""
    limits, inside = limits_of(analyzer), []
    for w in group:
        refusal = limits.refusal(name, (w.decoded.width, w.decoded.height))
        if refusal:
            w.fail("image_limits", f"image {w.key!r} not analysed: {refusal}")
        else:
            inside.append(w)
    return inside


def _call(analyzer: Any, group: list[Work]) -> list:
    """The analyzer over the group's images (and their previous images, for an analyzer that compares)."""
    images = [w.decoded.image for w in group]
    if getattr(analyzer, "wants_previous", False):
        return analyzer.analyze(images, previous=[w.previous.image if w.previous else None for w in group])
    return analyzer.analyze(images)


def _checked(results: list, n: int, name: str) -> list:
    """An analyzer must return one result per image: a short or long list would pair results with the wrong
    jobs."""
    if len(results) != n:
        raise RuntimeError(f"analyzer {name} returned {len(results)} result(s) for {n} image(s)")
    return results


def _one_by_one(analyzer: Any, name: str, group: list[Work], batch_exc: Exception) -> list:
    """The batch raised: run images one at a time so only the image that breaks the engine fails."""
    if len(group) == 1:
        return [_analyzer_failure(name, group[0], batch_exc)]
    out: list = []
    for w in group:
        try:
            out.extend(_checked(_call(analyzer, [w]), 1, name))
        except Exception as exc:  # noqa: BLE001
            log.exception("job %s: analyzer %s failed", w.job_id, name)
            out.append(_analyzer_failure(name, w, exc))
    return out


def _analyzer_failure(name: str, w: Work, exc: Exception) -> str:
    if out_of_memory(exc):
        return (f"analyzer {name} ran out of memory on {w.key!r} ({w.decoded.width}x{w.decoded.height} pixels; "
                f"{explain(exc)}); make the image smaller or raise VLWATCH_WORKER_MAX_MEMORY_MB")
    return f"analyzer {name} failed on {w.key!r}: {explain(exc)}"
