"""Generation: cached vs uncached greedy, batched (left-padded) vs single, chunked prefill, MLA latent cache,
stops (EOS, length, repetition loop), sampling determinism, shared vision pass."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tests.model.tiny import random_model, tiny_config, toy_batch

from model.vl2.generation import GenerationConfig, generate, generate_many, greedy_reference, repeats_tail
from model.vl2.language import KVCache
from model.vl2.modeling import DeepseekVL2Model

N_NEW = 12


@pytest.fixture(scope="module", params=["mha", "mla"])
def model(request: pytest.FixtureRequest) -> DeepseekVL2Model:
    return random_model(tiny_config(request.param, "sigmoid" if request.param == "mla" else "softmax"), seed=11)


def _batch(model: DeepseekVL2Model) -> SimpleNamespace:
    return SimpleNamespace(**toy_batch(model.cfg, [3, 9, 5], [[(1, 1)], [(2, 1)], []], seed=3))


def _row(batch: SimpleNamespace, b: int) -> SimpleNamespace:
    """Request ``b`` alone, without its padding."""
    keep = batch.attention_mask[b]
    return SimpleNamespace(input_ids=batch.input_ids[b:b + 1, keep], attention_mask=batch.attention_mask[b:b + 1, keep],
                           images=batch.images[b:b + 1], images_seq_mask=batch.images_seq_mask[b:b + 1, keep],
                           images_spatial_crop=batch.images_spatial_crop[b:b + 1])


def test_cached_greedy_equals_uncached(model: DeepseekVL2Model) -> None:
    one = _row(_batch(model), 1)
    cfg = GenerationConfig(max_new_tokens=N_NEW, eos_token_id=None)
    out = generate(model, one, cfg)
    embeds = model.prepare_inputs_embeds(one.input_ids, one.images, one.images_seq_mask, one.images_spatial_crop)
    assert out.tokens[0] == greedy_reference(model, embeds, N_NEW)
    assert out.finish == ["length"] and len(out.probs[0]) == N_NEW
    assert all(0.0 < p <= 1.0 for p in out.probs[0])


def test_batched_left_padded_equals_single(model: DeepseekVL2Model) -> None:
    batch = _batch(model)
    cfg = GenerationConfig(max_new_tokens=N_NEW, eos_token_id=None)
    out = generate(model, batch, cfg)
    for b in range(3):
        single = generate(model, _row(batch, b), cfg)
        assert out.tokens[b] == single.tokens[0]
        torch.testing.assert_close(torch.tensor(out.probs[b]), torch.tensor(single.probs[0]), atol=1e-5, rtol=1e-4)
    assert out.prompt_tokens == batch.attention_mask.sum(-1).tolist()
    # the full (uncached) forward of a left-padded batch matches single requests on real positions
    logits = model(**vars(batch))
    for b in range(3):
        one = _row(batch, b)
        torch.testing.assert_close(logits[b, batch.attention_mask[b]], model(**vars(one))[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk", [5, 32])
def test_chunked_prefill_equals_one_shot(model: DeepseekVL2Model, chunk: int) -> None:
    batch = _batch(model)
    base = generate(model, batch, GenerationConfig(max_new_tokens=6, eos_token_id=None))
    chunked = generate(model, batch, GenerationConfig(max_new_tokens=6, eos_token_id=None, prefill_chunk=chunk))
    assert chunked.tokens == base.tokens
    torch.testing.assert_close(torch.tensor(chunked.probs), torch.tensor(base.probs), atol=1e-5, rtol=1e-4)


def test_mla_cache_holds_only_latent_and_rope_key() -> None:
    cfg = tiny_config("mla")
    cache = KVCache(cfg.language, batch=2, max_len=10, device="cpu", dtype=torch.float32)
    L = cfg.language
    assert cache.a[0].shape == (2, 10, L.kv_lora_rank) and cache.b[0].shape == (2, 10, L.qk_rope_head_dim)
    assert cache.nbytes() == 2 * 10 * (L.kv_lora_rank + L.qk_rope_head_dim) * 4 * L.num_hidden_layers
    mha = KVCache(tiny_config("mha").language, batch=2, max_len=10, device="cpu", dtype=torch.float32)
    assert mha.a[0].shape == (2, 4, 10, 16)


def test_eos_stops_each_sequence(model: DeepseekVL2Model) -> None:
    batch = _batch(model)
    free = generate(model, batch, GenerationConfig(max_new_tokens=N_NEW, eos_token_id=None))
    eos = free.tokens[1][3]  # make request 1's 4th token the stop token
    out = generate(model, batch, GenerationConfig(max_new_tokens=N_NEW, eos_token_id=eos))
    assert out.finish[1] == "eos" and out.tokens[1] == free.tokens[1][:free.tokens[1].index(eos)]
    for b in (0, 2):
        expect = free.tokens[b][:free.tokens[b].index(eos)] if eos in free.tokens[b] else free.tokens[b]
        assert out.tokens[b] == expect


def test_repetition_guard() -> None:
    assert repeats_tail([5, 1, 2, 3, 1, 2, 3, 1, 2, 3], 3, 3)
    assert not repeats_tail([5, 1, 2, 3, 1, 2, 3, 1, 2, 4], 3, 3)
    assert repeats_tail([7, 7, 7, 7], 1, 4) and not repeats_tail([7, 7, 7], 1, 4)
    assert not repeats_tail([1, 2, 1, 2, 1, 2], 0, 3)
    model = random_model(tiny_config(), seed=0)
    with torch.no_grad():  # force a loop: all-zero logits, so greedy picks token 0 every step
        model.language.lm_head.weight.zero_()
    one = _row(SimpleNamespace(**toy_batch(model.cfg, [4], [[]])), 0)
    out = generate(model, one, GenerationConfig(max_new_tokens=50, eos_token_id=None, repeat_ngram=4, repeat_times=5))
    assert out.finish == ["repetition"] and out.tokens[0] == [0] * 5


def test_sampling_seeded_and_top_p(model: DeepseekVL2Model) -> None:
    batch = _batch(model)
    cfg = GenerationConfig(max_new_tokens=8, eos_token_id=None, do_sample=True, temperature=0.7, top_p=0.9,
                           repetition_penalty=1.1, seed=123)
    a, b = generate(model, batch, cfg), generate(model, batch, cfg)
    assert a.tokens == b.tokens
    tiny_p = generate(model, batch, GenerationConfig(max_new_tokens=8, eos_token_id=None, do_sample=True,
                                                     top_p=1e-6, seed=5))
    greedy = generate(model, batch, GenerationConfig(max_new_tokens=8, eos_token_id=None))
    assert tiny_p.tokens == greedy.tokens  # top_p -> 0 keeps only the best token


def test_generate_many_shares_one_vision_pass(model: DeepseekVL2Model) -> None:
    cfg = model.cfg
    images = ["img-a", "img-b"]  # stand-ins: the toy processor below draws each image's tiles from its name
    crops = {"img-a": (2, 1), "img-b": (1, 1)}
    prompts = ["a", "bbb", "cc"]

    def processor(ps: list[str], imgs: list[list[str]]) -> SimpleNamespace:
        out = toy_batch(cfg, [2 + len(p) for p in ps], [[crops[im[0]]] for im in imgs])
        out["images"].zero_()
        for i, im in enumerate(imgs):  # each image's tiles depend on the image only
            w, h = crops[im[0]]
            gen = torch.Generator().manual_seed(ord(im[0][-1]))
            out["images"][i, :1 + w * h] = torch.rand(1 + w * h, 3, 28, 28, generator=gen) * 2 - 1
        return SimpleNamespace(**out)

    calls = []
    handle = model.vision.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        many = generate_many(model, processor, images, prompts, GenerationConfig(max_new_tokens=5, eos_token_id=None))
    finally:
        handle.remove()
    assert calls == [3 + 2]  # one pass over the tiles of the two images, not of the six requests
    joint = processor([p for _ in images for p in prompts], [[im] for im in images for _ in prompts])
    each = generate(model, joint, GenerationConfig(max_new_tokens=5, eos_token_id=None))
    assert many.tokens == each.tokens and len(many.tokens) == 6
    single = generate_many(model, processor, "img-b", prompts, GenerationConfig(max_new_tokens=5, eos_token_id=None))
    assert len(single.tokens) == 3


def test_mla_with_q_lora_cached_equals_uncached() -> None:
    """q_lora_rank (unused by the releases, default in the official config) builds and decodes consistently."""
    from dataclasses import replace

    cfg = tiny_config("mla")
    cfg = replace(cfg, language=replace(cfg.language, q_lora_rank=24))
    model = random_model(cfg, seed=8)
    assert model.language.model.layers[0].self_attn.q_b_proj.weight.shape == (4 * 24, 24)
    one = _row(SimpleNamespace(**toy_batch(cfg, [6], [[(1, 1)]], seed=1)), 0)
    out = generate(model, one, GenerationConfig(max_new_tokens=6, eos_token_id=None))
    embeds = model.prepare_inputs_embeds(one.input_ids, one.images, one.images_seq_mask, one.images_spatial_crop)
    assert out.tokens[0] == greedy_reference(model, embeds, 6)


def test_text_only_request_in_an_image_batch() -> None:
    model = random_model(tiny_config(), seed=12)
    batch = SimpleNamespace(**toy_batch(model.cfg, [5, 4], [[], [(1, 1)]], seed=4))
    out = generate(model, batch, GenerationConfig(max_new_tokens=4, eos_token_id=None))
    alone = generate(model, _row(batch, 0), GenerationConfig(max_new_tokens=4, eos_token_id=None))
    assert out.tokens[0] == alone.tokens[0]


def test_repetition_penalty_discourages_repeats() -> None:
    from model.vl2.generation import _choose

    logits = torch.tensor([[1.0, 0.9, -1.0], [1.0, 0.9, -1.0]])
    seen = torch.tensor([[True, False, True], [False, False, False]])
    tok, prob = _choose(logits, seen, GenerationConfig(repetition_penalty=1.5), None)
    assert tok.tolist() == [1, 0]  # row 0: 1.0 / 1.5 < 0.9; row 1 has seen nothing
    raw = logits[0].softmax(-1)
    assert prob.tolist() == pytest.approx([raw[1].item(), raw[0].item()])  # probabilities of the raw model
    neg, _ = _choose(torch.tensor([[-0.5, -0.6]]), torch.tensor([[True, False]]),
                     GenerationConfig(repetition_penalty=1.5), None)
    assert neg.tolist() == [1]  # negative logits are multiplied: -0.75 < -0.6
    model = random_model(tiny_config(), seed=0)
    one = _row(SimpleNamespace(**toy_batch(model.cfg, [4], [[]])), 0)
    pen = generate(model, one, GenerationConfig(max_new_tokens=12, eos_token_id=None, repetition_penalty=100.0))
    assert len(set(pen.tokens[0])) == 12  # a huge penalty forbids any repeat
