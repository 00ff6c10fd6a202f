"""Memory: the KV pool sized by the budget with the plan's estimate; out of memory (an injected allocation failure)
halves what is admitted and completes every request with the same ids; a request that cannot fit alone fails with
what it needs and the budget; the Prometheus figures follow."""

from __future__ import annotations

import pytest
import torch
from prometheus_client import CollectorRegistry
from tests.model.scheduling import generate_alone, make_request, one_thread  # noqa: F401 (fixture)
from tests.model.tiny import random_model, tiny_config

from model.vl2.generation import GenerationConfig
from model.vl2.metrics import SchedulerMetrics
from model.vl2.plan import Workload, estimate
from model.vl2.scheduler import Scheduler, SchedulerConfig

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = random_model(tiny_config("mla"), seed=21)
CFG = GenerationConfig(max_new_tokens=6, eos_token_id=None)


def _requests(n: int, crops: list[tuple[int, int]] | None = None) -> list:
    return [make_request(MODEL, i, crops or [(1, 1)], [3 + i % 4, 5], [CFG, CFG], seed=i) for i in range(n)]


class FakeDevice:
    """An allocation-failure hook: the device "holds" ``rows`` decode rows, ``slots`` pool slots and vision passes of
    ``tiles`` tiles; beyond that it raises CUDA's out-of-memory error, as the allocator would."""

    def __init__(self, rows: int = 99, slots: int = 99, tiles: int = 99) -> None:
        self.limits = {"decode": rows, "pool": slots, "vision": tiles, "prefill": 99}
        self.raised: list[str] = []

    def __call__(self, stage: str, rows: int, positions: int) -> None:
        if rows > self.limits[stage]:
            self.raised.append(stage)
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: {stage} of {rows})")


def test_oom_halves_admission_and_completes_every_request() -> None:
    reqs = _requests(6)
    device = FakeDevice(rows=3, slots=6)
    registry = CollectorRegistry()
    sched = Scheduler(MODEL, SchedulerConfig(max_batch=12), metrics=SchedulerMetrics("0", registry),
                      alloc_hook=device)
    results = sched.run(reqs)
    assert device.raised[0] == "pool" and "decode" in device.raised  # 12 slots, then 6; 4+ rows, then fewer
    assert sched.limit <= 3 and sched.stats["oom_shrinks"] == len(device.raised)
    for r in reqs:
        assert results[r.key].error is None
        assert results[r.key].output.tokens == generate_alone(MODEL, r)
    assert registry.get_sample_value("vlwatch_gpu_oom_shrinks_total", {"gpu": "0"}) == len(device.raised)
    assert registry.get_sample_value("vlwatch_gpu_images_total", {"gpu": "0"}) == 6
    assert registry.get_sample_value("vlwatch_gpu_generated_tokens_total", {"gpu": "0"}) == 12 * 5
    assert registry.get_sample_value("vlwatch_gpu_scheduler_prompts", {"gpu": "0", "state": "waiting"}) == 0


def test_admission_recovers_after_enough_prompts_finish() -> None:
    device = FakeDevice(rows=2)
    sched = Scheduler(MODEL, SchedulerConfig(max_batch=8, recover_after=4), alloc_hook=device)
    sched.run(_requests(3))
    assert sched.stats["oom_shrinks"] >= 1
    device.limits["decode"] = 99  # the pressure is gone
    sched.run(_requests(6))
    assert sched.limit == 8


def test_request_that_cannot_fit_alone_fails_and_the_rest_complete() -> None:
    reqs = _requests(4)
    big = make_request(MODEL, "big", [(2, 2)], [4, 6], [CFG, CFG], seed=40)  # 5 tiles; the device holds 3
    budget = 64 << 20
    sched = Scheduler(MODEL, SchedulerConfig(max_batch=4, memory_budget=budget), alloc_hook=FakeDevice(tiles=3))
    results = sched.run(reqs[:2] + [big] + reqs[2:])
    err = results["big"].error
    assert results["big"].output is None and err is not None
    need = estimate(MODEL.cfg, 1, Workload((2, 2), big.prompts[1].positions - MODEL.cfg.image_tokens(2, 2), 0,
                                         SchedulerConfig().prefill_chunk),
                    torch.float32).total
    assert f"needs about {need / 2**30:.2f} GiB" in err and "budget is 0.06 GiB per GPU" in err
    assert "out of memory with nothing else running" in err
    for r in reqs:
        assert results[r.key].output.tokens == generate_alone(MODEL, r)


def test_pool_is_sized_by_the_budget_with_the_plans_estimate() -> None:
    reqs = _requests(5)
    slot_len = -(-max(p.positions for r in reqs for p in r.prompts) // 16) * 16
    work = Workload((1, 1), slot_len - MODEL.cfg.image_tokens(1, 1), 0, SchedulerConfig().prefill_chunk)
    budget = estimate(MODEL.cfg, 3, work, torch.float32).total  # exactly three slots
    sched = Scheduler(MODEL, SchedulerConfig(max_batch=8, memory_budget=budget))
    results = sched.run(reqs)
    assert sched.runner.cache is not None and sched.runner.cache.slots == 3 and sched.stats["max_active"] == 3
    assert all(results[r.key].output.tokens == generate_alone(MODEL, r) for r in reqs)
    too_small = Scheduler(MODEL, SchedulerConfig(memory_budget=estimate(MODEL.cfg, 1, work, torch.float32).weights))
    failed = too_small.run(_requests(1))[0]
    assert failed.output is None and "the memory budget holds no KV slot for it" in failed.error
