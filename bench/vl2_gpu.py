"""GPU bench: the continuous-batching scheduler against static batches and batch 1, in one run, on the full-size
DeepSeek-VL2-Tiny architecture with random weights in bf16, requests shaped like 1024x768 grounding prompts
(3x2 local tiles + global = 7 tiles, 1415 image tokens + 20 text tokens).

Two streams: "grounding" (every answer 32 new tokens) and "mixed" (7 of 8 grounding answers of 12 tokens, 1 of 8
OCR answers of 200). Random weights never emit EOS here (``eos_token_id=None``), so every answer has exactly its
length. Per mode: images/s, new tokens/s, peak GPU memory, achieved TFLOP/s of the compute floor (``flops_per_image``
+ the decode matmuls) and its fraction of the GPU's peak; then the same with a 10 GiB budget (the scheduler's pool
sized by ``plan``; static batches sized by ``estimate_memory`` for the same budget).

    python bench/vl2_gpu.py [--images 256] [--budget 10GiB] [--max-batch 64] [--peak-tflops 989]
    python bench/vl2_gpu.py --tiny    # CPU, toy checkpoint, few tokens: proves the script runs; figures meaningless

Goals (issue 9): scheduler >= 8x batch 1; >= 1.5x static batches on the mixed stream; >= 50 % of the compute
floor; peak <= 10 GiB at the 10 GiB budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
from vl2_common import random_model, synthetic_batch, toy_config  # noqa: E402

from model.vl2.config import VL2Config  # noqa: E402
from model.vl2.generation import GenerationConfig, generate  # noqa: E402
from model.vl2.memory import estimate_memory  # noqa: E402
from model.vl2.modeling import DeepseekVL2Model  # noqa: E402
from model.vl2.plan import GiB, largest, parse_size  # noqa: E402
from model.vl2.requests import requests_from_batch  # noqa: E402
from model.vl2.scheduler import Scheduler, SchedulerConfig  # noqa: E402

CROP = (3, 2)  # select_best_resolution(1024x768) over the release candidates: 1152x768
TEXT_TOKENS = 20  # "<image>\n<|ref|>the person on the left<|/ref|>." in the template
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def streams(n: int, tiny: bool) -> dict[str, list[int]]:
    """New tokens per request of each stream."""
    g, short, ocr = (4, 3, 24) if tiny else (32, 12, 200)
    return {"grounding": [g] * n, "mixed": [ocr if i % 8 == 7 else short for i in range(n)]}


def floor_flops(model: DeepseekVL2Model, new_tokens: list[int]) -> int:
    """The compute floor of a stream: encode + prefill per image, plus 2 FLOPs per active weight (LM layers and
    lm_head) per generated token (context-dependent attention FLOPs left out, as in ``flops_per_image``)."""
    per_token = 2 * (model.active_language_params() + model.language.lm_head.weight.numel())
    return len(new_tokens) * model.flops_per_image(*CROP) + per_token * sum(new_tokens)


class Clock:
    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / GiB, 2) if self.cuda else None


def run_static(model: DeepseekVL2Model, batch: Any, news: list[int], size: int, device: str) -> None:
    """Static batches of ``size`` in arrival order; each decodes until its longest answer ends."""
    for s in range(0, len(news), size):
        rows = {k: (v[s:s + size].to(device) if k != "images_spatial_crop" else v[s:s + size])
                for k, v in vars(batch).items()}
        generate(model, type(batch)(**rows), GenerationConfig(max_new_tokens=max(news[s:s + size]),
                                                              eos_token_id=None))


def run_scheduler(model: DeepseekVL2Model, batch: Any, news: list[int], config: SchedulerConfig) -> dict[str, int]:
    reqs = requests_from_batch(batch, [GenerationConfig(max_new_tokens=k, eos_token_id=None) for k in news],
                               list(range(len(news))))
    sched = Scheduler(model, config)
    results = sched.run(reqs)
    failed = [k for k, r in results.items() if r.error]
    assert not failed, f"requests failed: {failed[:3]} ({results[failed[0]].error})"
    stats = dict(sched.stats)
    stats["pool_slots"] = sched.runner.cache.slots if sched.runner.cache is not None else 0
    stats["decode"] = sched.runner.graphs.mode if sched.runner.graphs is not None else "eager"
    sched.runner.free_cache()
    return stats


def measure(clock: Clock, fn: Any, images: int, new_tokens: int, flops: int, peak_tflops: float | None,
            warmup: bool = True) -> dict[str, Any]:
    if warmup:
        fn()  # allocator, kernels, CUDA graphs
    clock.reset_peak()
    clock.sync()
    t0 = time.perf_counter()
    extra = fn()
    clock.sync()
    secs = time.perf_counter() - t0
    tflops = flops / secs / 1e12
    out = {"images": images, "seconds": round(secs, 3), "images_per_s": round(images / secs, 2),
           "new_tokens_per_s": round(new_tokens / secs, 1), "peak_gib": clock.peak_gib(),
           "achieved_tflops": round(tflops, 3),
           "of_peak": round(tflops / peak_tflops, 3) if peak_tflops else None}
    if isinstance(extra, dict):
        out["scheduler"] = extra
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU, toy random checkpoint, few tokens (a smoke run)")
    ap.add_argument("--images", type=int, default=None, help="requests per stream (default 256; --tiny 16)")
    ap.add_argument("--batch1-images", type=int, default=None, help="requests timed at batch 1 (default 8; tiny 3)")
    ap.add_argument("--max-batch", type=int, default=None, help="scheduler and static batch (default 64; tiny 4)")
    ap.add_argument("--budget", default=None, help="the constrained run's budget (default 10GiB; --tiny: the estimate "
                    "of three requests)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: by name)")
    args = ap.parse_args()
    device, dtype = ("cpu", torch.float32) if args.tiny else ("cuda", torch.bfloat16)
    if device == "cuda" and not torch.cuda.is_available():
        print("vl2_gpu: no CUDA device is available here; run with --tiny for the CPU smoke run.", file=sys.stderr)
        return 2
    n = args.images or (16 if args.tiny else 256)
    n1 = args.batch1_images or (3 if args.tiny else 8)
    max_b = args.max_batch or (4 if args.tiny else 64)
    cfg = toy_config() if args.tiny else VL2Config.from_name("tiny")
    if args.tiny:
        torch.set_num_threads(1)
    model = random_model(cfg, dtype, device)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    clock = Clock(device)
    chunk = SchedulerConfig().prefill_chunk
    report: dict[str, Any] = {"device": name, "model": f"{cfg.name} (random weights)", "dtype": str(dtype),
                              "tiles_per_image": 1 + CROP[0] * CROP[1], "tokens_per_image": cfg.image_tokens(*CROP),
                              "gflops_per_image": round(model.flops_per_image(*CROP) / 1e9, 3),
                              "peak_tflops": peak, "streams": {}}
    for stream, news in streams(n, args.tiny).items():
        batch = synthetic_batch(cfg, n, CROP, TEXT_TOKENS, "cpu")
        flops = floor_flops(model, news)
        runs: dict[str, Any] = {}
        one = news[:n1]
        runs["batch1"] = measure(clock, lambda: run_static(model, batch, one, 1, device), n1, sum(one),
                                 floor_flops(model, one), peak)
        runs["static"] = measure(clock, lambda: run_static(model, batch, news, max_b, device), n, sum(news), flops,
                                 peak)
        runs["scheduler"] = measure(clock, lambda: run_scheduler(model, batch, news, SchedulerConfig(
            max_batch=max_b, prefill_chunk=chunk)), n, sum(news), flops, peak)
        work_max = max(news)
        budget = parse_size(args.budget) if args.budget else (
            estimate_memory(cfg, 3, CROP, dtype, work_max, TEXT_TOKENS, chunk, prefill_batch=1).total
            if args.tiny else 10 * GiB)
        static_b = largest(lambda b: estimate_memory(cfg, b, CROP, dtype, work_max, TEXT_TOKENS, chunk).total
                           <= budget, max_b)
        runs["budget_gib"] = round(budget / GiB, 4)
        runs["static_at_budget"] = {"batch": static_b, **measure(
            clock, lambda: run_static(model, batch, news, max(static_b, 1), device), n, sum(news), flops, peak)}
        runs["scheduler_at_budget"] = measure(clock, lambda: run_scheduler(model, batch, news, SchedulerConfig(
            memory_budget=budget, max_batch=max_b, prefill_chunk=chunk)), n, sum(news), flops, peak)
        s, b1, st = (runs[k]["images_per_s"] for k in ("scheduler", "batch1", "static"))
        runs["scheduler_over_batch1"] = round(s / b1, 2)
        runs["scheduler_over_static"] = round(s / st, 2)
        runs["at_budget_scheduler_over_static"] = round(
            runs["scheduler_at_budget"]["images_per_s"] / runs["static_at_budget"]["images_per_s"], 2)
        report["streams"][stream] = runs
    mixed, ground = report["streams"]["mixed"], report["streams"]["grounding"]
    report["goals"] = None if args.tiny else {
        "scheduler_over_batch1>=8": ground["scheduler_over_batch1"] >= 8,
        "mixed_scheduler_over_static>=1.5": mixed["scheduler_over_static"] >= 1.5,
        "of_compute_floor>=0.5": (ground["scheduler"]["of_peak"] or 0) >= 0.5 if peak else None,
        "peak_at_10GiB<=10GiB": (max(r["scheduler_at_budget"]["peak_gib"] for r in (mixed, ground)) <= 10.0
                                 if device == "cuda" else None)}
    if args.tiny:
        report["note"] = "CPU smoke run on a toy checkpoint: proves the script works; the figures mean nothing"
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
