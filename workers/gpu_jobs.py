"""One job of the GPU worker, from its claim to its results (the threads around it are ``workers.gpu``'s).

``prepare`` runs the pipeline's stages for the job alone (check, fetch, decode, pair with the previous image), the
profile's CPU analyzers, and puts every VL2 prompt of the profile about the image into scheduler requests
(``model.vl2.serving``: one request for the image alone, one more for the checks that compare with the previous
image). ``finish`` turns the scheduler's answers into the VL2 analyzers' results and orders all results as the
profile lists its analyzers, as the batch path does, so ``workers.commit`` writes the same rows either way.
``build_scheduler`` makes the scheduler the jobs of one model go to, as the worker's settings size it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Hashable, Optional

from services.config import GPU_ANALYZERS
from services.settings import Settings
from workers.analyze import analyze, load_analyzer
from workers.pipeline import check, decode, fetch, pair
from workers.runtime import Runtime
from workers.work import Outcome, Work

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from model.vl2.requests import RequestResult
    from model.vl2.serving import ImagePrompts


@dataclass(eq=False)
class GpuJob:
    """A job the GPU worker holds: its ``Work``, its VL2 analyzers and prompts, the answers back so far, and its
    outcome once committed (``done`` is set then)."""

    work: Work
    expected_prompts: int  # the profile's VL2 prompts, counted as waiting work until the job is prepared
    analyzers: list = field(default_factory=list)  # the profile's VL2 analyzers, in its order
    prompts: Optional[ImagePrompts] = None
    scheduler: Any = None  # the scheduler its requests went to
    prepared: bool = False  # ``prepare`` has run (whatever came of it)
    submitted_at: float = 0.0
    answers: dict[Hashable, RequestResult] = field(default_factory=dict)
    outcome: Optional[Outcome] = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def job_id(self) -> int:
        return self.work.job_id

    @property
    def answered(self) -> bool:
        """Prepared, and every request of the job is back from the scheduler (or it had none)."""
        return self.prepared and (self.prompts is None or len(self.answers) == len(self.prompts.requests))

    @property
    def outstanding(self) -> int:
        """Prompts not answered yet: the profile's count until the job is prepared."""
        if not self.prepared:
            return self.expected_prompts
        return 0 if self.answered or self.prompts is None else self.prompts.prompts

    @property
    def model(self) -> Any:
        return self.analyzers[0].model


def expected_prompts(rt: Runtime, profile_name: str) -> int:
    """The prompts a job of ``profile_name`` puts to the scheduler at most (phrases, OCR, checks), at least 1."""
    profile = rt.config.profiles.get(profile_name)
    if profile is None:
        return 1
    per = {"vl2-ground": len(profile.phrases), "vl2-ocr": 1, "vl2-ask": len(profile.checks)}
    return max(1, sum(per.get(name, 0) for name in profile.analyzers))


def prepare(rt: Runtime, job: GpuJob, exact: bool) -> None:
    """Everything up to the GPU: a job that fails on the way has ``work.failure`` set and no prompts; a job whose
    profile has no VL2 analyzer has no prompts either. Transient faults (storage or database unreachable) raise."""
    from model.vl2.serving import image_prompts

    w = job.work
    for stage in (check, fetch, decode, pair):
        stage(rt, [w])
    if w.failure is not None:
        return
    profile = rt.config.profiles[w.profile]
    analyze(rt, [w], skip=GPU_ANALYZERS)  # the CPU analyzers of the profile, here
    for name in (n for n in profile.analyzers if n in GPU_ANALYZERS):
        analyzer = load_analyzer(rt, name, profile, [w])
        if analyzer is None:
            return
        job.analyzers.append(analyzer)
    if w.failure is not None or not job.analyzers:
        return
    previous = w.previous.image if w.previous is not None else None
    try:
        job.prompts = image_prompts(w.job_id, job.analyzers, w.decoded.image, previous, exact)
    except Exception as exc:  # noqa: BLE001 - an image the processor cannot tile fails its job only
        w.fail("analyzer_error", f"{_names(job)} could not prepare {w.key!r}: {type(exc).__name__}: {exc}")


def finish(rt: Runtime, job: GpuJob) -> None:
    """The scheduler's answers as the VL2 analyzers' results (a failed request fails the job with the scheduler's
    reason, e.g. that the image alone does not fit the memory budget); results in the profile's order."""
    from model.vl2.serving import results_of

    w = job.work
    if w.failure is not None:
        return
    if job.prompts is not None:
        seconds = time.perf_counter() - job.submitted_at
        try:
            w.results += results_of(job.analyzers, job.prompts, job.answers)
        except Exception as exc:  # noqa: BLE001 - a failed request or an answer that breaks parsing: this job only
            w.fail("analyzer_error", f"{_names(job)} failed on {w.key!r}: {exc}")
            return
        for a in job.analyzers:
            w.timings[a.name] = seconds  # from submission to the last answer: waiting in the scheduler included
    order = list(rt.config.profiles[w.profile].analyzers)
    w.results.sort(key=lambda r: order.index(r.lineage.analyzer))


def _names(job: GpuJob) -> str:
    return ", ".join(a.name for a in job.analyzers) or "VL2"


def build_scheduler(model: Any, settings: Settings) -> Any:
    """The scheduler of ``model`` as the settings size it: the memory budget per GPU (``VLWATCH_VL2_GPU_MEMORY``,
    the figure ``vlwatch model plan`` uses), at most ``VLWATCH_VL2_MAX_BATCH`` prompts at once."""
    from model.vl2.plan import parse_size
    from model.vl2.scheduler import Scheduler, SchedulerConfig

    config = SchedulerConfig(memory_budget=parse_size(settings.vl2_gpu_memory) if settings.vl2_gpu_memory else None,
                             max_batch=settings.vl2_max_batch)
    if settings.vl2_prefill_chunk:
        config.prefill_chunk = settings.vl2_prefill_chunk
    device = model.image_newline.device
    log.info("VL2 scheduler on %s: memory budget %s, at most %d prompts at once", device,
             settings.vl2_gpu_memory or "not set (the KV pool holds the max batch)", config.max_batch)
    return Scheduler(model, config, metrics=_metrics(device))


_metrics_made: Optional[Any] = None


def _metrics(device: Any) -> Any:
    """The process's scheduler metrics (``vlwatch_gpu_*``, labelled with the GPU index), made once: the metric
    objects register once per process."""
    global _metrics_made
    if _metrics_made is None:
        from model.vl2.metrics import SchedulerMetrics

        _metrics_made = SchedulerMetrics(gpu=str(device.index) if device.type == "cuda" else device.type)
    return _metrics_made
