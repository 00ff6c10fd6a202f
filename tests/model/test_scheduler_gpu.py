"""GPU tier of the scheduler: decode captured as CUDA graphs per batch bucket (replays equal the eager step at the
same shapes), the eager fallback where capture cannot run, layers across two GPUs, a real out-of-memory shrink.
Skipped where no CUDA device is present."""

from __future__ import annotations

import pytest
import torch
from tests.model.scheduling import generate_alone, make_request
from tests.model.tiny import random_model, tiny_config

from model.vl2.generation import GenerationConfig
from model.vl2.placement import balanced_placement
from model.vl2.scheduler import Scheduler, SchedulerConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

GEN = [GenerationConfig(max_new_tokens=n, eos_token_id=None) for n in (9, 3, 6)]


def _requests(model, n: int = 6) -> list:  # type: ignore[no-untyped-def]
    return [make_request(model, i, [(2, 1)], [4 + i % 3, 6, 2], GEN, seed=i) for i in range(n)]


def _grouped_kernel() -> bool:
    """Whether this GPU has torch's grouped GEMM for bf16 (the MoE path a graph can capture)."""
    a = torch.randn(16, 64, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(2, 64, 64, device="cuda", dtype=torch.bfloat16)
    try:
        torch._grouped_mm(a, b, offs=torch.tensor([8, 16], device="cuda", dtype=torch.int32))
    except (RuntimeError, NotImplementedError):
        return False
    return True


@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_graph_replay_equals_the_eager_step(attention: str) -> None:
    if not _grouped_kernel():
        pytest.skip("no bf16 grouped GEMM on this GPU: the MoE step syncs and cannot be captured")
    model = random_model(tiny_config(attention, "sigmoid"), seed=3).to("cuda", torch.bfloat16)
    sched = Scheduler(model, SchedulerConfig(max_batch=8))
    results = sched.run(_requests(model))
    graphs = sched.runner.graphs
    assert graphs is not None and graphs.mode == "cuda-graphs" and graphs.graphs and not graphs.failed
    assert all(len(r.output.tokens[0]) == 9 for r in results.values())
    b = max(graphs.graphs)
    tokens = torch.randint(10, 100, (b,), device="cuda")
    positions = torch.arange(b, device="cuda") + 5
    replay = graphs(tokens, positions, positions.max().item() + 1).clone()
    eager = sched.runner._decode_step(graphs.tokens[:b].clone(), graphs.rows[:b].clone(),
                                      graphs.positions[:b].clone(), b, graphs.slot_len)
    assert torch.equal(replay, eager)


def test_uncapturable_step_falls_back_to_eager() -> None:
    """fp32 experts have no grouped kernel on CUDA: the per-expert fallback syncs, capture fails, eager runs."""
    model = random_model(tiny_config("mha"), seed=4).to("cuda")
    sched = Scheduler(model, SchedulerConfig(max_batch=4))
    reqs = _requests(model, 3)
    results = sched.run(reqs)
    graphs = sched.runner.graphs
    assert graphs is not None and graphs.failed and not graphs.graphs
    for r in reqs:
        assert results[r.key].output.tokens == generate_alone(model, r)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_layers_across_two_gpus_give_the_same_ids() -> None:
    cfg = tiny_config("mla", "sigmoid", layers=4)
    reqs = _requests(random_model(cfg, seed=6), 4)
    single = Scheduler(random_model(cfg, seed=6).to("cuda:0"), SchedulerConfig(max_batch=4)).run(reqs)
    placement = balanced_placement(cfg, ["cuda:0", "cuda:1"], torch.float32)
    split = Scheduler(random_model(cfg, seed=6), SchedulerConfig(max_batch=4), placement=placement)
    results = split.run(reqs)
    assert split.runner.cache is not None and {d.index for d in split.runner.cache.devices} == {0, 1}
    for r in reqs:
        assert results[r.key].output.tokens == single[r.key].output.tokens


def test_real_out_of_memory_shrinks_and_completes() -> None:
    """A pool that claims more than the device has: the allocation fails for real and the scheduler halves it."""
    model = random_model(tiny_config("mha"), seed=7).to("cuda", torch.bfloat16)
    free, _ = torch.cuda.mem_get_info()
    per_slot = 2 * 3 * 4 * 16 * 2  # k and v, 3 layers, 4 heads, head_dim 16, bf16: bytes per position
    slot_len = 256
    sched = Scheduler(model, SchedulerConfig(max_batch=2 * free // (per_slot * slot_len), slot_len=slot_len))
    reqs = _requests(model, 2)
    results = sched.run(reqs)
    assert sched.stats["oom_shrinks"] >= 1 and all(r.error is None for r in results.values())
