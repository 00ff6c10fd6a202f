"""Memory estimate for serving: weights, KV cache and peak activations for a batch of image requests.

Weights are counted exactly from the architecture (built on the meta device, no allocation). Activations are an
estimate of the largest set of live tensors in the vision pass and in one LM prefill chunk (eager attention keeps
an fp32 score matrix; fused SDPA kernels need less), so treat them as an upper-side guide, not a measurement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import torch

from model.vl2.config import VL2Config
from model.vl2.modeling import DeepseekVL2Model


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    activations: int
    tokens_per_request: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations

    def as_dict(self) -> dict[str, int]:
        return {"weights": self.weights, "kv_cache": self.kv_cache, "activations": self.activations,
                "total": self.total, "tokens_per_request": self.tokens_per_request}


def kv_bytes_per_token(cfg: VL2Config, dtype: torch.dtype) -> int:
    """Cache bytes per token over all layers: MLA 576 values per layer, MHA 2 * hidden."""
    lang = cfg.language
    per_layer = (lang.kv_lora_rank or 0) + lang.qk_rope_head_dim if lang.use_mla else 2 * lang.hidden_size
    return per_layer * lang.num_hidden_layers * _size(dtype)


def weight_bytes(cfg: VL2Config, dtype: torch.dtype) -> int:
    return _parameter_count(json.dumps(cfg.to_dict(), sort_keys=True)) * _size(dtype)


@lru_cache(maxsize=16)
def _parameter_count(config_json: str) -> int:
    """Parameters of the architecture (built on the meta device; cached: plans ask for many batch sizes)."""
    with torch.device("meta"):
        model = DeepseekVL2Model(VL2Config.from_dict(json.loads(config_json)))
    return sum(p.numel() for p in model.parameters())


def estimate_memory(variant: str | VL2Config, batch: int = 1, tiles: tuple[int, int] | int = (2, 2),
                    dtype: torch.dtype = torch.bfloat16, new_tokens: int = 256, text_tokens: int = 64,
                    prefill_chunk: int | None = None, prefill_batch: int | None = None) -> MemoryEstimate:
    """Bytes needed for ``batch`` requests of one image each, tiled ``tiles`` = (width_tiles, height_tiles)
    (an int n means n local tiles in one row), ``text_tokens`` prompt text and ``new_tokens`` generated.

    ``prefill_batch``: how many of them go through the vision pass and the prefill together (default: all, as a
    static batch does; the continuous-batching scheduler encodes and prefills one request at a time, so 1). The KV
    cache and the decode logits always scale with ``batch``."""
    cfg = VL2Config.from_name(variant) if isinstance(variant, str) else variant
    nw, nh = (tiles, 1) if isinstance(tiles, int) else tiles
    lang, vis = cfg.language, cfg.vision
    es = _size(dtype)
    prompt = cfg.image_tokens(nw, nh) + text_tokens
    total_len = prompt + new_tokens
    kv = batch * total_len * kv_bytes_per_token(cfg, dtype)
    # vision: all tiles of the batch in one pass; one block's live tensors
    p = batch if prefill_batch is None else min(prefill_batch, batch)
    n_tiles = p * (1 + nw * nh)
    t = vis.grid ** 2
    vision_act = n_tiles * t * (2 * vis.width + 3 * vis.width + vis.mlp_dim) * es \
        + n_tiles * vis.heads * t * t * 4  # fp32 scores
    # LM prefill chunk: residual + normed + q + MoE intermediates (k routed copies) + scores, last-row logits
    c = min(prefill_chunk or prompt, prompt)
    heads = lang.num_attention_heads
    q_width = heads * ((lang.kv_lora_rank or 0) + lang.qk_rope_head_dim if lang.use_mla else lang.head_dim)
    k = lang.num_experts_per_tok or 1
    moe_width = max(lang.intermediate_size, 2 * k * lang.moe_intermediate_size + k * lang.hidden_size)
    lm_act = p * c * (3 * lang.hidden_size + 2 * q_width + 2 * moe_width) * es \
        + p * heads * c * prompt * 4 + batch * lang.vocab_size * 4
    embeds = p * prompt * lang.hidden_size * es
    return MemoryEstimate(weights=weight_bytes(cfg, dtype), kv_cache=kv,
                          activations=max(vision_act, lm_act) + embeds, tokens_per_request=prompt)


def _size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()
