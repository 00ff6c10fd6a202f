"""Continuous batching on the tiny random checkpoints (fp32, CPU): every prompt's greedy ids equal generating it
alone, whatever arrives when, however long, beside whatever else; multi-prompt requests share one vision pass;
the pool grows for a longer request; decode runs eagerly on the CPU."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.model.scheduling import generate_alone, make_request, one_thread  # noqa: F401 (fixture)
from tests.model.tiny import random_model, tiny_config

from model.vl2.generation import GenerationConfig
from model.vl2.modeling import DeepseekVL2Model
from model.vl2.scheduler import Scheduler, SchedulerConfig

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = {"mha": random_model(tiny_config("mha"), seed=11),
          "mla": random_model(tiny_config("mla", "sigmoid"), seed=12)}

CROPS = [[], [(1, 1)], [(2, 1)], [(1, 2)]]
request_st = st.tuples(
    st.sampled_from(range(len(CROPS))),  # the image
    st.lists(st.tuples(st.integers(1, 12), st.integers(1, 10), st.sampled_from([None, 7, 61])),
             min_size=1, max_size=3),  # per prompt: text length, max new tokens, EOS id
    st.integers(0, 6))  # arrives before this many scheduler steps have run


@settings(max_examples=14, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(attention=st.sampled_from(["mha", "mla"]), requests=st.lists(request_st, min_size=1, max_size=6),
       max_batch=st.integers(1, 5), chunk=st.integers(2, 20), per_step=st.integers(3, 40))
def test_ids_do_not_depend_on_the_batch(attention: str, requests: list, max_batch: int, chunk: int,
                                        per_step: int) -> None:
    model = MODELS[attention]
    reqs = []
    for i, (crop, prompts, arrive) in enumerate(requests):
        cfgs = [GenerationConfig(max_new_tokens=n, eos_token_id=eos) for _, n, eos in prompts]
        reqs.append((arrive, make_request(model, i, CROPS[crop], [t for t, _, _ in prompts], cfgs, seed=i)))
    sched = Scheduler(model, SchedulerConfig(max_batch=max_batch, prefill_chunk=chunk,
                                             prefill_tokens_per_step=per_step))
    results, steps = {}, 0
    pending = sorted(reqs, key=lambda r: r[0])
    while pending or not sched.idle:
        while pending and pending[0][0] <= steps:
            sched.submit(pending.pop(0)[1])
        results.update((r.key, r) for r in sched.step())
        steps += 1
    assert sched.stats["max_active"] <= max_batch
    for _, req in reqs:
        got = results[req.key]
        assert got.error is None and got.output is not None
        assert got.output.tokens == generate_alone(model, req), req.key
        assert got.output.prompt_tokens == [int(p.input_ids.shape[0]) for p in req.prompts]


def test_grounding_and_ocr_mix_is_continuous() -> None:
    """Short answers retire while a long one keeps decoding: their slots are refilled, so the mixed stream needs far
    fewer decode steps than static batches of the same size (each batch runs until its longest answer ends)."""
    model = MODELS["mha"]
    short = GenerationConfig(max_new_tokens=3, eos_token_id=None)
    long = GenerationConfig(max_new_tokens=24, eos_token_id=None)
    reqs = [make_request(model, i, [(1, 1)], [4], [long if i % 4 == 0 else short], seed=i) for i in range(12)]
    sched = Scheduler(model, SchedulerConfig(max_batch=4))
    results = sched.run(reqs)
    for r in reqs:
        assert results[r.key].output.tokens == generate_alone(model, r)
    static_steps = 3 * 24  # three static batches of four, each holding a 24-token answer
    assert sched.stats["decode_steps"] < static_steps * 0.6, dict(sched.stats)
    assert sched.stats["tokens"] == 3 * 23 + 9 * 2  # the first token of each comes from the prefill


def test_one_vision_pass_per_image_for_all_its_prompts() -> None:
    model = MODELS["mla"]
    cfg = GenerationConfig(max_new_tokens=4, eos_token_id=None)
    reqs = [make_request(model, i, [(2, 1)], [3, 5, 8], [cfg] * 3, seed=i) for i in range(2)]
    calls: list[int] = []
    handle = model.vision.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        results = Scheduler(model, SchedulerConfig(max_batch=2)).run(reqs)  # prompts of one image admitted apart
    finally:
        handle.remove()
    assert calls == [3, 3]
    for r in reqs:
        assert results[r.key].output.tokens == generate_alone(model, r)


def test_longer_request_drains_and_grows_the_pool() -> None:
    model = MODELS["mha"]
    cfg = GenerationConfig(max_new_tokens=4, eos_token_id=None)
    sched = Scheduler(model, SchedulerConfig(max_batch=3))
    first = [make_request(model, i, [(1, 1)], [3], [cfg], seed=i) for i in range(3)]
    for r in first:
        sched.submit(r)
    sched.step()
    assert sched.runner.cache is not None
    small = sched.runner.cache.slot_len
    big = make_request(model, "big", [(2, 2)], [30], [GenerationConfig(max_new_tokens=6, eos_token_id=None)], seed=9)
    results = sched.run([big])
    assert sched.runner.cache.slot_len >= big.prompts[0].positions > small
    assert sched.stats["pools"] == 2  # drained, then reallocated once
    assert all(results[r.key].output.tokens == generate_alone(model, r) for r in first)
    assert results["big"].output.tokens == generate_alone(model, big)


def test_text_only_zero_tokens_and_empty_requests() -> None:
    model = MODELS["mha"]
    text = make_request(model, "text", [], [6], [GenerationConfig(max_new_tokens=5, eos_token_id=None)], seed=1)
    zero = make_request(model, "zero", [(1, 1)], [2], [GenerationConfig(max_new_tokens=0)], seed=2)
    empty = make_request(model, "empty", [(1, 1)], [], [], seed=3)
    results = Scheduler(model).run([text, zero, empty])
    assert results["text"].output.tokens == generate_alone(model, text)
    assert results["zero"].output.tokens == [[]] and results["zero"].output.finish == ["length"]
    assert results["empty"].output.tokens == []


def test_decode_is_eager_on_cpu_and_sampling_is_refused() -> None:
    model = MODELS["mla"]
    sched = Scheduler(model, SchedulerConfig(capture=True))
    req = make_request(model, 0, [(1, 1)], [4], [GenerationConfig(max_new_tokens=5, eos_token_id=None)], seed=4)
    assert sched.run([req])[0].output.tokens == generate_alone(model, req)
    assert sched.runner.graphs is not None and sched.runner.graphs.mode == "eager"
    assert sched.runner.graphs.graphs == {} and not sched.runner.graphs.failed
    sampled = make_request(model, 1, [(1, 1)], [4], [GenerationConfig(do_sample=True)], seed=5)
    with pytest.raises(ValueError, match="greedily"):
        sched.submit(sampled)


def test_mla_pool_holds_the_latent_cache() -> None:
    model: DeepseekVL2Model = MODELS["mla"]
    sched = Scheduler(model, SchedulerConfig(max_batch=2))
    sched.run([make_request(model, 0, [(1, 1)], [3], [GenerationConfig(max_new_tokens=2)], seed=0)])
    cache = sched.runner.cache
    lang = model.cfg.language
    assert cache is not None and cache.a[0].shape == (3, cache.slot_len, lang.kv_lora_rank)
    assert cache.b[0].shape == (3, cache.slot_len, lang.qk_rope_head_dim)
    assert cache.nbytes() == 3 * cache.slot_len * (lang.kv_lora_rank + lang.qk_rope_head_dim) * 4 * \
        lang.num_hidden_layers
    assert torch.equal(cache.a[0][2], torch.zeros_like(cache.a[0][2]))  # the scratch row is never written eagerly
