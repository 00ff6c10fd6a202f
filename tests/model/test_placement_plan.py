"""Layer placement across two devices (two CPU stand-ins) gives the same ids as one; ``vlwatch model plan`` for the
three variants at 10, 24, 40 and 80 GiB prints batches and placements that agree with the estimator."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from tests.model.scheduling import generate_alone, make_request, one_thread  # noqa: F401 (fixture)
from tests.model.tiny import random_model, tiny_config

from model.vl2.config import VL2Config
from model.vl2.generation import GenerationConfig
from model.vl2.placement import Placement, balanced_placement, component_bytes, device_weights
from model.vl2.plan import GiB, Workload, device_totals, estimate, make_plan, parse_size, split_by_device
from model.vl2.scheduler import Scheduler, SchedulerConfig
from services.cli.model import model_group


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_two_device_placement_gives_the_same_ids(attention: str) -> None:
    cfg = tiny_config(attention, "sigmoid" if attention == "mla" else "softmax", layers=4)
    gen = [GenerationConfig(max_new_tokens=n, eos_token_id=None) for n in (6, 3)]
    reqs = [make_request(random_model(cfg, seed=5), i, [(2, 1)], [4, 7], gen, seed=i) for i in range(3)]
    single = Scheduler(random_model(cfg, seed=5), SchedulerConfig(max_batch=4)).run(reqs)
    placement = balanced_placement(cfg, ["cpu", "cpu"], torch.float32)
    assert placement.layers[0] == 0 and placement.layers[-1] == 1 and len(placement.stages()) == 2
    split = Scheduler(random_model(cfg, seed=5), SchedulerConfig(max_batch=4), placement=placement)
    results = split.run(reqs)
    cache = split.runner.cache
    assert cache is not None and [str(d) for d in cache.devices] == [placement.devices[i] for i in placement.layers]
    for r in reqs:
        assert results[r.key].output.tokens == single[r.key].output.tokens
    assert results[0].output.tokens == generate_alone(random_model(cfg, seed=5), reqs[0])


def test_balanced_placement_puts_head_first_and_tail_last() -> None:
    cfg = VL2Config.from_name("small")
    head, layers, tail = component_bytes(cfg, torch.bfloat16)
    placement = balanced_placement(cfg, ["cuda:0", "cuda:1", "cuda:2"], torch.bfloat16)
    per_device = device_weights(cfg, placement, torch.bfloat16)
    assert sum(per_device) == head + sum(layers) + tail == estimate(cfg, 1, Workload(), torch.bfloat16).weights
    assert list(placement.layers) == sorted(placement.layers) and set(placement.layers) == {0, 1, 2}
    # no contiguous split has a lighter heaviest device: moving a boundary layer overloads a neighbour
    assert max(per_device) - min(per_device) <= max(layers) + max(head, tail)
    assert "vision tower" in placement.describe()[0] and "lm_head" in placement.describe()[-1]
    with pytest.raises(ValueError):
        Placement(("cuda:0", "cuda:1"), (1, 0))


@pytest.mark.parametrize("variant", ["tiny", "small", "base"])
@pytest.mark.parametrize("gib", [10, 24, 40, 80])
def test_plan_agrees_with_the_estimator(variant: str, gib: int) -> None:
    budget, work, dtype, cap = gib * GiB, Workload(), torch.bfloat16, 256
    cfg = VL2Config.from_name(variant)
    one_gpu = make_plan(variant, budget, 1, dtype, work, cap)
    fits = lambda b: estimate(cfg, b, work, dtype).total <= budget  # noqa: E731 - one GPU: the whole estimate
    if one_gpu.max_batch:
        assert fits(one_gpu.max_batch) and (one_gpu.max_batch == cap or not fits(one_gpu.max_batch + 1))
        assert one_gpu.placement is None and one_gpu.tiles_in_flight == one_gpu.max_batch * 7
    else:
        assert not fits(1)
    four = make_plan(variant, budget, 4, dtype, work, cap)
    if one_gpu.max_batch:
        assert four.placement is None and four.max_batch == one_gpu.max_batch  # spread only when needed
        return
    assert four.placement is not None  # Small and Base at 10/24 GiB (Base at 40 too): layers across GPUs
    weights, layers = split_by_device(cfg, four.placement, dtype)
    totals = lambda b: device_totals(estimate(cfg, b, work, dtype), weights, layers)  # noqa: E731
    if four.max_batch:
        assert max(totals(four.max_batch)) <= budget
        assert four.max_batch == cap or max(totals(four.max_batch + 1)) > budget
        assert four.device_bytes == totals(four.max_batch)
    else:  # Base at 10 GiB: four GPUs are too few; the plan says how many would do
        assert max(totals(1)) > budget and four.gpus_needed is not None
        more = balanced_placement(cfg, [f"cuda:{i}" for i in range(four.gpus_needed)], dtype)
        assert max(device_totals(estimate(cfg, 1, work, dtype), *split_by_device(cfg, more, dtype))) <= budget


def test_plan_command_prints_the_plan() -> None:
    res = CliRunner().invoke(model_group, ["plan", "small", "--gpu-memory", "24GiB", "--gpus", "2"])
    assert res.exit_code == 0, res.output
    plan = make_plan("small", 24 * GiB, 2)
    assert plan.placement is not None
    assert f"weights           {plan.weights / GiB:.2f} GiB" in res.output
    assert f"KV per token      {plan.kv_per_token / 1024:.1f} KiB" in res.output
    assert f"largest batch     {plan.max_batch} concurrent requests, {plan.tiles_in_flight} tiles" in res.output
    for line, b in zip(plan.placement.describe(), plan.device_bytes):
        assert f"  {line}: {b / GiB:.2f} GiB" in res.output
    tiny = CliRunner().invoke(model_group, ["plan", "--variant", "tiny", "--gpu-memory", "10GiB"])
    assert tiny.exit_code == 0 and "one GPU holds everything" in tiny.output
    bad = CliRunner().invoke(model_group, ["plan", "tiny", "--gpu-memory", "ten"])
    assert bad.exit_code == 2 and "not a memory size" in bad.output


def test_plan_reads_a_checkpoint_directory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.model.tiny import write_checkpoint

    ckpt = write_checkpoint(tmp_path / "ck", random_model(tiny_config("mla"), seed=1))
    res = CliRunner().invoke(model_group, ["plan", str(ckpt), "--gpu-memory", "64MiB", "--tiles", "1x1",
                                           "--new-tokens", "8", "--dtype", "float32"])
    assert res.exit_code == 0, res.output
    assert "budget 0.06 GiB per GPU x 1" in res.output and "largest batch" in res.output


@pytest.mark.parametrize("text,size", [("10GiB", 10 * GiB), ("24G", 24 * GiB), ("80GB", 80 * 10**9),
                                       ("512MiB", 512 << 20), ("40", 40 * GiB), ("1.5GiB", 3 * GiB // 2)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size
