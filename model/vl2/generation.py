"""Batched generation for a serving host: left-padded requests with their own images, a preallocated KV cache
(MLA: latent cache), optional chunked prefill, greedy or sampled decoding, per-sequence stops (EOS, length,
repetition loops) and the probability of every chosen token (for box confidence).

Positions come from the attention-mask cumsum, so a left-padded request decodes exactly as it would alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import torch

from model.vl2.modeling import DeepseekVL2Model, positions_from_mask


class BatchLike(Protocol):
    """What the processor's ``VL2Batch`` carries (see the NET/PROC contract)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    images: torch.Tensor
    images_seq_mask: torch.Tensor
    images_spatial_crop: torch.Tensor


@dataclass
class GenerationConfig:
    """Decoding settings. ``temperature == 0`` or ``do_sample=False`` is greedy.

    ``repeat_ngram``/``repeat_times``: stop a sequence whose last ``n``-gram (any ``n <= repeat_ngram``) has just
    occurred ``repeat_times`` times in a row -- the classic OCR loop. 0 disables.
    ``prefill_chunk``: run the prompt through the LM this many positions at a time (caps activation memory).
    The repetition penalty applies to the tokens generated so far (HF semantics for an embeddings-only prompt).
    """

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    eos_token_id: int | None = 1
    repeat_ngram: int = 0
    repeat_times: int = 4
    prefill_chunk: int | None = None
    seed: int | None = None


@dataclass
class GenerationOutput:
    """Per request: new token ids (EOS not included), the model probability of each chosen token (softmax of the
    raw logits, before penalty/temperature/top-p), and why it stopped: "eos", "length" or "repetition"."""

    tokens: list[list[int]]
    probs: list[list[float]]
    finish: list[str]
    prompt_tokens: list[int] = field(default_factory=list)


def repeats_tail(seq: Sequence[int], max_n: int, times: int) -> bool:
    """True if for some n <= max_n the last n*times tokens are one n-gram repeated ``times`` times."""
    if max_n <= 0 or times < 2:
        return False
    for n in range(1, max_n + 1):
        span = n * times
        if len(seq) < span:
            break
        tail = list(seq[-span:])
        gram = tail[-n:]
        if all(tail[i] == gram[i % n] for i in range(span)):
            return True
    return False


def _choose(logits: torch.Tensor, seen: torch.Tensor | None, cfg: GenerationConfig,
            gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] fp32, seen [B, V] bool (tokens generated so far, for the repetition penalty) ->
    (token ids [B], probability of each under the raw logits [B]). No host sync."""
    probs_raw = logits.softmax(-1)
    scores = logits
    if seen is not None and cfg.repetition_penalty != 1.0:
        pen = torch.where(scores < 0, scores * cfg.repetition_penalty, scores / cfg.repetition_penalty)
        scores = torch.where(seen, pen, scores)
    if cfg.do_sample and cfg.temperature > 0:
        scores = scores / cfg.temperature
        if cfg.top_p < 1.0:
            sorted_s, order = scores.sort(-1, descending=True)
            p_sorted = sorted_s.softmax(-1)
            drop = p_sorted.cumsum(-1) - p_sorted >= cfg.top_p  # keep the smallest prefix reaching top_p
            sorted_s = sorted_s.masked_fill(drop, float("-inf"))
            scores = torch.full_like(scores, float("-inf")).scatter(-1, order, sorted_s)
        tok = torch.multinomial(scores.softmax(-1), 1, generator=gen)[:, 0]
    else:
        tok = scores.argmax(-1)
    return tok, probs_raw.gather(1, tok[:, None])[:, 0]


@torch.no_grad()
def generate(model: DeepseekVL2Model, batch: BatchLike, config: GenerationConfig | None = None,
             image_embeds: list[torch.Tensor] | None = None) -> GenerationOutput:
    """Generate for every request in ``batch`` (left-padded). ``image_embeds`` (one tensor per request, from
    ``model.image_embeddings``) skips the vision pass."""
    cfg = config or GenerationConfig()
    device = model.image_newline.device
    input_ids = batch.input_ids.to(device)
    mask = batch.attention_mask.to(device).bool()
    images = batch.images.to(device) if batch.images is not None else None
    seq_mask = batch.images_seq_mask.to(device) if batch.images_seq_mask is not None else None
    crops = batch.images_spatial_crop
    embeds = model.prepare_inputs_embeds(input_ids, images, seq_mask, crops, image_embeds)  # [B, T, D]
    return generate_from_embeds(model, embeds, mask, cfg)


@torch.no_grad()
def generate_from_embeds(model: DeepseekVL2Model, embeds: torch.Tensor, mask: torch.Tensor,
                         cfg: GenerationConfig) -> GenerationOutput:
    """The decoding loop over ready-made input embeddings [B, T, D] and their left-padded mask [B, T]."""
    b, t, _ = embeds.shape
    lang = model.language
    prompt_tokens = mask.sum(-1).tolist()
    gen = torch.Generator(device=embeds.device).manual_seed(cfg.seed) if cfg.seed is not None else None
    cache = model.new_cache(b, t + cfg.max_new_tokens)
    positions = positions_from_mask(mask)  # [B, T]
    chunk = cfg.prefill_chunk or t
    hidden = embeds[:, :0]
    for s in range(0, t, chunk):
        e = min(t, s + chunk)
        hidden = lang(embeds[:, s:e], positions[:, s:e], mask[:, :e], cache)  # [B, e-s, D]
    logits = lang.logits(hidden[:, -1])  # [B, V]
    next_pos = positions[:, -1] + 1  # [B]

    rows = list(range(b))  # request index of each live batch row
    tokens: list[list[int]] = [[] for _ in range(b)]
    probs: list[list[float]] = [[] for _ in range(b)]
    finish = ["length"] * b
    embed = lang.model.embed_tokens
    seen = torch.zeros_like(logits, dtype=torch.bool) if cfg.repetition_penalty != 1.0 else None  # [B, V]
    for step in range(cfg.max_new_tokens):
        tok, p = _choose(logits, seen, cfg, gen)
        if seen is not None:
            seen[torch.arange(len(rows), device=seen.device), tok] = True
        tok_l, p_l = tok.tolist(), p.tolist()  # the one host sync per step
        keep: list[int] = []
        for i, r in enumerate(rows):
            if cfg.eos_token_id is not None and tok_l[i] == cfg.eos_token_id:
                finish[r] = "eos"
                continue
            tokens[r].append(tok_l[i])
            probs[r].append(p_l[i])
            if repeats_tail(tokens[r], cfg.repeat_ngram, cfg.repeat_times):
                finish[r] = "repetition"
                continue
            keep.append(i)
        if not keep or step == cfg.max_new_tokens - 1:
            break
        if len(keep) < len(rows):  # drop finished rows from every per-row state
            k = torch.tensor(keep, device=embeds.device)
            cache.select(k)
            mask, next_pos, tok = mask[k], next_pos[k], tok[k]
            seen = seen[k] if seen is not None else None
            rows = [rows[i] for i in keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        hidden = lang(embed(tok[:, None]), next_pos[:, None], mask, cache)  # [B', 1, D]
        logits = lang.logits(hidden[:, -1])
        next_pos = next_pos + 1
    return GenerationOutput(tokens=tokens, probs=probs, finish=finish, prompt_tokens=prompt_tokens)


@torch.no_grad()
def generate_many(model: DeepseekVL2Model, processor: Any, images: Any, prompts: Sequence[str],
                  config: GenerationConfig | None = None) -> GenerationOutput:
    """Every prompt about every image, in one batch: row ``i * len(prompts) + j`` is image i, prompt j.

    Each image goes through the vision tower and projector once and its token embeddings are reused for all of
    its prompts. ``images`` is one image or a sequence of them; each prompt holds one ``<image>`` placeholder.
    """
    imgs = list(images) if isinstance(images, (list, tuple)) else [images]
    n_p = len(prompts)
    batch = processor([p for _ in imgs for p in prompts], [[im] for im in imgs for _ in prompts])
    firsts = torch.arange(len(imgs)) * n_p  # one row per image
    device = model.image_newline.device
    shared = model.image_embeddings(batch.images[firsts].to(device), batch.images_spatial_crop[firsts])
    return generate(model, batch, config, image_embeds=[shared[i // n_p] for i in range(len(imgs) * n_p)])


def greedy_reference(model: DeepseekVL2Model, embeds: torch.Tensor, n: int) -> list[int]:
    """Uncached greedy decoding of one unpadded sequence [1, T, D] by full forwards (the test oracle; O(n^2))."""
    out: list[int] = []
    e = embeds
    for _ in range(n):
        mask = torch.ones(e.shape[:2], dtype=torch.bool, device=e.device)
        logits = model.language.logits(model.language(e, positions_from_mask(mask), mask)[:, -1])
        tok = int(logits.argmax(-1))
        out.append(tok)
        e = torch.cat([e, model.language.model.embed_tokens(torch.tensor([[tok]], device=e.device))], dim=1)
    return out
