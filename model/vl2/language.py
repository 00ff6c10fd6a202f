"""DeepSeek-V2 (DeepSeekMoE) language model: RMSNorm, MHA (tiny) or MLA (small/base) attention, dense layer 0,
MoE layers with fp32 routing, grouped expert compute, and a KV cache (MLA: compressed latent + k_pe only).

Module and parameter names follow the official checkpoint, except routed experts, which are stacked per layer
(``mlp.w13 [E, 2I, D]`` = gate_proj ++ up_proj, ``mlp.w2 [E, D, I]`` = down_proj); the loader maps
``mlp.experts.E.*`` onto slices of them.

Why this module is long: one decoder forward (norms, both attention kinds with their caches, dense and MoE MLPs)
reads top-down in one file; split, each piece would need the others to be understood.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.vl2.config import LanguageConfig


class RMSNorm(nn.Module):
    """Normalise in fp32, cast back, then scale (the official order)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


# ---- RoPE (tables and positions always fp32) ----------------------------------------------------------------
def rope_tables(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [B, T] -> cos, sin [B, 1, T, dim/2] in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    freqs = positions.to(torch.float32)[..., None] * inv_freq  # [B, T, dim/2]
    return freqs.cos()[:, None], freqs.sin()[:, None]


def rope_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NeoX / Llama pairing (i, i + d/2) over the whole head. x [B, H, T, d]."""
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Pairs (2i, 2i+1); output is de-interleaved (evens then odds), as the official code leaves it. Queries and
    keys get the same permutation, so their dot products are exactly those of in-place interleaved RoPE."""
    x32 = x.float()
    xe, xo = x32[..., 0::2], x32[..., 1::2]
    return torch.cat((xe * cos - xo * sin, xo * cos + xe * sin), dim=-1).to(x.dtype)


# ---- KV cache -------------------------------------------------------------------------------------------------
class KVCache:
    """Preallocated per-layer buffers, shared write offset ``length`` (left-padded batches advance together).

    MHA: k, v [B, H, S, head_dim]. MLA: latent [B, S, kv_lora_rank] (normalised c_kv) and k_pe [B, S, rope]
    (already rotated) -- 576 values per token per layer for the releases, instead of H * 256.
    """

    def __init__(self, cfg: LanguageConfig, batch: int, max_len: int, device: torch.device | str,
                 dtype: torch.dtype) -> None:
        self.max_len, self.length = max_len, 0
        self.mla = cfg.use_mla
        n = cfg.num_hidden_layers
        if self.mla:
            assert cfg.kv_lora_rank is not None
            self.a = [torch.zeros(batch, max_len, cfg.kv_lora_rank, device=device, dtype=dtype) for _ in range(n)]
            self.b = [torch.zeros(batch, max_len, cfg.qk_rope_head_dim, device=device, dtype=dtype)
                      for _ in range(n)]
        else:
            shape = (batch, cfg.num_attention_heads, max_len, cfg.head_dim)
            self.a = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n)]
            self.b = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n)]

    def update(self, layer: int, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new step's entries at ``length`` and return everything cached so far (views)."""
        t = a.shape[-2]
        end = self.length + t
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens > max_len {self.max_len}")
        if self.mla:
            self.a[layer][:, self.length:end] = a
            self.b[layer][:, self.length:end] = b
            return self.a[layer][:, :end], self.b[layer][:, :end]
        self.a[layer][:, :, self.length:end] = a
        self.b[layer][:, :, self.length:end] = b
        return self.a[layer][:, :, :end], self.b[layer][:, :, :end]

    def select(self, keep: torch.Tensor) -> None:
        """Keep only batch rows ``keep`` (drop finished sequences)."""
        self.a = [x[keep] for x in self.a]
        self.b = [x[keep] for x in self.b]

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in self.a + self.b)


# ---- attention ------------------------------------------------------------------------------------------------
class MHAttention(nn.Module):
    """Tiny: Llama attention, head_dim = hidden / heads, half-split RoPE over the whole head."""

    def __init__(self, cfg: LanguageConfig, layer_idx: int) -> None:
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        h, d, bias = cfg.num_attention_heads, cfg.head_dim, cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, h * d, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, h * d, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, h * d, bias=bias)
        self.o_proj = nn.Linear(h * d, cfg.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                cache: KVCache | None) -> torch.Tensor:
        b, t, _ = x.shape
        h, d = self.cfg.num_attention_heads, self.cfg.head_dim
        q = self.q_proj(x).view(b, t, h, d).transpose(1, 2)  # [B, H, T, d]
        k = self.k_proj(x).view(b, t, h, d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, h, d).transpose(1, 2)
        cos, sin = rope_tables(positions, d, self.cfg.rope_theta)
        q, k = rope_half(q, cos, sin), rope_half(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # [B, H, S, d]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, d]
        return self.o_proj(out.transpose(1, 2).reshape(b, t, h * d))


class MLAttention(nn.Module):
    """Multi-head latent attention, always in the absorbed form: scores are taken against the cached latent.

    q_nope is mapped through kv_b_proj's key half into latent space; the attention output (in latent space) is
    mapped through its value half. Heads are folded into the rows of two matmuls against the shared latent and
    k_pe (no per-head copies of the cache); scale (nope + rope)^-0.5; softmax in fp32 as the official code.
    """

    def __init__(self, cfg: LanguageConfig, layer_idx: int) -> None:
        super().__init__()
        assert cfg.kv_lora_rank is not None
        self.cfg, self.layer_idx = cfg, layer_idx
        h, dq = cfg.num_attention_heads, cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(cfg.hidden_size, h * dq, bias=False)
        else:
            self.q_a_proj = nn.Linear(cfg.hidden_size, cfg.q_lora_rank, bias=cfg.attention_bias)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, h * dq, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(cfg.hidden_size, cfg.kv_lora_rank + cfg.qk_rope_head_dim,
                                            bias=cfg.attention_bias)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, cfg.rms_norm_eps)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, h * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.o_proj = nn.Linear(h * cfg.v_head_dim, cfg.hidden_size, bias=cfg.attention_bias)
        self.scale = dq ** -0.5

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                cache: KVCache | None) -> torch.Tensor:
        c = self.cfg
        b, t, _ = x.shape
        h, nope, rope, r, dv = (c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.kv_lora_rank,
                                c.v_head_dim)
        q = self.q_proj(x) if c.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(b, t, h, nope + rope).transpose(1, 2)  # [B, H, T, 192]
        q_nope, q_pe = q.split([nope, rope], dim=-1)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([r, rope], dim=-1)  # [B, T, 512], [B, T, 64]
        latent = self.kv_a_layernorm(latent)
        cos, sin = rope_tables(positions, rope, c.rope_theta)
        q_pe = rope_interleaved(q_pe, cos, sin)
        k_pe = rope_interleaved(k_pe[:, None], cos, sin)[:, 0]  # [B, T, 64]
        if cache is not None:
            latent, k_pe = cache.update(self.layer_idx, latent, k_pe)  # [B, S, 512], [B, S, 64]
        w = self.kv_b_proj.weight.view(h, nope + dv, r)
        w_uk, w_uv = w[:, :nope], w[:, nope:]  # [H, 128, 512], [H, 128, 512]
        q_lat = torch.matmul(q_nope, w_uk)  # [B, H, T, 512]
        s = latent.shape[1]
        # heads folded into rows: the latent and k_pe are shared by all heads (MQA-like), never expanded
        scores = torch.matmul(q_lat.reshape(b, h * t, r), latent.transpose(1, 2))  # [B, H*T, S]
        scores = scores + torch.matmul(q_pe.reshape(b, h * t, rope), k_pe.transpose(1, 2))
        scores = scores.view(b, h, t, s) * self.scale + mask  # [B, H, T, S]
        probs = scores.softmax(dim=-1, dtype=torch.float32).to(latent.dtype)
        out = torch.matmul(probs.view(b, h * t, s), latent).view(b, h, t, r)  # [B, H, T, 512]
        out = torch.matmul(out, w_uv.transpose(1, 2))  # [B, H, T, 128]
        return self.o_proj(out.transpose(1, 2).reshape(b, t, h * dv))


# ---- MLPs -----------------------------------------------------------------------------------------------------
class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, inter: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoEGate(nn.Module):
    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__()
        assert cfg.n_routed_experts is not None
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        if cfg.topk_method == "noaux_tc":
            self.e_score_correction_bias = nn.Parameter(torch.zeros(cfg.n_routed_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, D] -> expert ids [N, k] (int64), weights [N, k] fp32."""
        c = self.cfg
        k = c.num_experts_per_tok
        assert k is not None
        logits = F.linear(x.float(), self.weight.float())  # [N, E] fp32
        scores = logits.softmax(dim=-1) if c.scoring_func == "softmax" else logits.sigmoid()
        if c.topk_method == "noaux_tc":
            # the bias only decides which experts; weights are the un-biased scores (n_group == 1: no group mask)
            ids = torch.topk(scores + self.e_score_correction_bias.float()[None], k, dim=-1, sorted=False)[1]
            weights = scores.gather(1, ids)
        else:
            weights, ids = torch.topk(scores, k, dim=-1, sorted=False)
        if k > 1 and c.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return ids, weights * c.routed_scaling_factor


class MoE(nn.Module):
    """Routed experts (stacked weights, grouped compute) + shared experts (always added, weight 1)."""

    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__()
        assert cfg.n_routed_experts is not None
        self.cfg = cfg
        e, d, i = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate = MoEGate(cfg)
        self.w13 = nn.Parameter(torch.empty(e, 2 * i, d))  # gate_proj rows then up_proj rows, per expert
        self.w2 = nn.Parameter(torch.empty(e, d, i))  # down_proj
        self.shared_experts = MLP(d, i * cfg.n_shared_experts) if cfg.n_shared_experts else None

    def forward(self, x: torch.Tensor, router_log: list[torch.Tensor] | None = None) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [N, D]
        ids, weights = self.gate(flat)
        if router_log is not None:
            router_log.append(ids.view(*shape[:-1], -1))
        y = self.experts_grouped(flat, ids, weights).view(shape)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y

    def experts_grouped(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Sort (token, slot) pairs by expert, run every expert on its contiguous segment with grouped GEMMs
        (offsets stay on the device: no host sync), scatter back, weighted sum in fp32."""
        n, k = ids.shape
        e, i = self.w13.shape[0], self.w2.shape[2]
        flat_ids = ids.reshape(-1)  # [N*k]
        order = flat_ids.argsort(stable=True)
        xs = x[order // k]  # [N*k, D], grouped by expert
        counts = torch.zeros(e, dtype=torch.int64, device=x.device).index_add_(0, flat_ids, torch.ones_like(flat_ids))
        offs = counts.cumsum(0).to(torch.int32)  # [E] segment ends (no bincount: it syncs on CUDA)
        h = _grouped_mm(xs, self.w13.transpose(1, 2), offs)  # [N*k, 2I]
        a = F.silu(h[:, :i]) * h[:, i:]  # [N*k, I]
        ys = _grouped_mm(a, self.w2.transpose(1, 2), offs)  # [N*k, D]
        out = torch.empty_like(ys)
        out[order] = ys
        return (out.view(n, k, -1).float() * weights[..., None]).sum(dim=1).to(x.dtype)  # [N, D]

    def experts_reference(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Slow per-(token, slot) loop; the test oracle for ``experts_grouped``."""
        i = self.w2.shape[2]
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for t in range(ids.shape[0]):
            for s in range(ids.shape[1]):
                ex = int(ids[t, s])
                h = self.w13[ex] @ x[t]
                y = self.w2[ex] @ (F.silu(h[:i]) * h[i:])
                out[t] += weights[t, s] * y.float()
        return out.to(x.dtype)


_GROUPED_MM_UNSUPPORTED: set[tuple[str, torch.dtype, int, int]] = set()


def _grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """a [M, K] rows grouped by ``offs`` (cumulative ends), b [E, K, N] -> [M, N].

    Uses ``torch._grouped_mm`` (one kernel, device-side offsets). Where it cannot run (dtype/alignment/backend),
    falls back to a per-expert split, which reads the segment sizes on the host once per layer.
    """
    key = (a.device.type, a.dtype, a.shape[1], b.shape[2])
    if key not in _GROUPED_MM_UNSUPPORTED:
        try:
            return torch._grouped_mm(a, b, offs=offs)
        except (RuntimeError, NotImplementedError):
            _GROUPED_MM_UNSUPPORTED.add(key)  # e.g. fp32 on CUDA: do not retry every layer
    ends = offs.tolist()
    starts = [0] + ends[:-1]
    return torch.cat([a[s:t] @ b[j] for j, (s, t) in enumerate(zip(starts, ends))], dim=0)


# ---- decoder --------------------------------------------------------------------------------------------------
class DecoderLayer(nn.Module):
    def __init__(self, cfg: LanguageConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn: nn.Module = MLAttention(cfg, layer_idx) if cfg.use_mla else MHAttention(cfg, layer_idx)
        self.mlp: nn.Module = MoE(cfg) if cfg.is_moe_layer(layer_idx) else MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: KVCache | None,
                router_log: list[torch.Tensor] | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), positions, mask, cache)
        h = self.post_attention_layernorm(x)
        return x + (self.mlp(h, router_log) if isinstance(self.mlp, MoE) else self.mlp(h))


class DeepseekV2Model(nn.Module):
    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class DeepseekV2ForCausalLM(nn.Module):
    """``language.*`` in the checkpoint: ``model`` (embeddings, layers, norm) and an untied ``lm_head``."""

    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = DeepseekV2Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, inputs_embeds: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, router_log: list[torch.Tensor] | None = None) -> torch.Tensor:
        """inputs_embeds [B, T, D], positions [B, T] (fp32 RoPE), key_mask [B, past + T] bool (False = padding).
        Returns final-normed hidden states [B, T, D]; ``logits()`` maps them to fp32 logits."""
        past = cache.length if cache is not None else 0
        mask = causal_mask(key_mask, inputs_embeds.shape[1], past, inputs_embeds.dtype, inputs_embeds.device)
        x = inputs_embeds
        for layer in self.model.layers:
            x = layer(x, positions, mask, cache, router_log)
        if cache is not None:
            cache.length += inputs_embeds.shape[1]
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()


def causal_mask(key_mask: torch.Tensor | None, t: int, past: int, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """Additive mask [B or 1, 1, T, past + T]: finite minimum where a query may not look (keeps rows finite)."""
    s = past + t
    q_pos = torch.arange(past, s, device=device)
    allowed = torch.arange(s, device=device)[None, :] <= q_pos[:, None]  # [T, S]
    allowed = allowed[None] if key_mask is None else allowed[None] & key_mask[:, None, :s].bool()  # [B, T, S]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None]  # [B, 1, T, S]
