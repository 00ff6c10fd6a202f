"""Model pieces against independent straightforward references: attention (MHA, MLA), RoPE pairing, MoE,
projector feature order, 2D tile layout, fp32 RoPE under bf16, and release parameter counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.model.tiny import random_model, tiny_config, toy_batch

from model.vl2.config import VL2Config
from model.vl2.language import MHAttention, MLAttention, MoE, causal_mask, rope_interleaved, rope_tables
from model.vl2.modeling import DeepseekVL2Model


def _official_rope(x: torch.Tensor, pos: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """transformers-4.38 style: emb = cat(freqs, freqs); x*cos + rotate_half(x)*sin. x [B, H, T, d]."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2).float() / d))
    emb = torch.cat([pos.float()[..., None] * inv] * 2, dim=-1)[:, None]  # [B, 1, T, d]
    rot = torch.cat([-x[..., d // 2:], x[..., :d // 2]], dim=-1)
    return x * emb.cos() + rot * emb.sin()


def _naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    t = q.shape[-2]
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return s.softmax(-1) @ v


def test_mha_matches_naive() -> None:
    cfg = tiny_config("mha").language
    torch.manual_seed(0)
    attn = MHAttention(cfg, 0)
    x = torch.randn(2, 7, cfg.hidden_size)
    pos = torch.arange(7)[None].expand(2, 7) + 3
    out = attn(x, pos, causal_mask(None, 7, 0, x.dtype, x.device), None)
    h, d = cfg.num_attention_heads, cfg.head_dim
    q = _official_rope(attn.q_proj(x).view(2, 7, h, d).transpose(1, 2), pos)
    k = _official_rope(attn.k_proj(x).view(2, 7, h, d).transpose(1, 2), pos)
    v = attn.v_proj(x).view(2, 7, h, d).transpose(1, 2)
    ref = attn.o_proj(_naive_attention(q, k, v, d ** -0.5).transpose(1, 2).reshape(2, 7, -1))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_interleaved_rope_matches_official_deinterleave() -> None:
    x = torch.randn(2, 3, 5, 8)
    pos = torch.arange(5)[None].expand(2, 5) * 37
    cos, sin = rope_tables(pos, 8, 10000.0)
    ours = rope_interleaved(x, cos, sin)
    deint = x.view(2, 3, 5, 4, 2).transpose(4, 3).reshape(2, 3, 5, 8)  # the official permutation
    torch.testing.assert_close(ours, _official_rope(deint, pos), atol=1e-5, rtol=1e-5)


def test_mla_absorbed_matches_unabsorbed_naive() -> None:
    cfg = tiny_config("mla").language
    torch.manual_seed(1)
    attn = MLAttention(cfg, 0)
    b, t = 2, 6
    x = torch.randn(b, t, cfg.hidden_size)
    pos = torch.arange(t)[None].expand(b, t)
    out = attn(x, pos, causal_mask(None, t, 0, x.dtype, x.device), None)
    h, nope, rope, r, dv = 4, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank, cfg.v_head_dim
    q = attn.q_proj(x).view(b, t, h, nope + rope).transpose(1, 2)
    lat, kpe = attn.kv_a_proj_with_mqa(x).split([r, rope], -1)
    kv = attn.kv_b_proj(attn.kv_a_layernorm(lat)).view(b, t, h, nope + dv).transpose(1, 2)
    k_nope, v = kv.split([nope, dv], -1)

    def deint(z: torch.Tensor) -> torch.Tensor:
        return z.unflatten(-1, (rope // 2, 2)).transpose(-1, -2).flatten(-2)

    q_pe = _official_rope(deint(q[..., nope:]), pos)
    k_pe = _official_rope(deint(kpe[:, None]), pos).expand(b, h, t, rope)
    qf = torch.cat([q[..., :nope], q_pe], -1)
    kf = torch.cat([k_nope, k_pe], -1)
    ref = attn.o_proj(_naive_attention(qf, kf, v, (nope + rope) ** -0.5).transpose(1, 2).reshape(b, t, -1))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("routing", ["softmax", "sigmoid"])
def test_moe_grouped_matches_reference_loop(routing: str) -> None:
    model = random_model(tiny_config("mla", routing), seed=3)
    moe = model.language.model.layers[1].mlp
    assert isinstance(moe, MoE)
    x = torch.randn(37, moe.cfg.hidden_size)
    ids, w = moe.gate(x)
    assert ids.shape == (37, 3) and w.dtype == torch.float32
    torch.testing.assert_close(moe.experts_grouped(x, ids, w), moe.experts_reference(x, ids, w),
                               atol=1e-5, rtol=1e-5)
    # routing maths against a direct transcription of the official gate
    logits = x @ moe.gate.weight.T
    if routing == "softmax":
        scores = logits.softmax(-1)
        ref_w, ref_ids = scores.topk(3, -1)
    else:
        scores = logits.sigmoid()
        ref_ids = (scores + moe.gate.e_score_correction_bias).topk(3, -1).indices
        ref_w = scores.gather(1, ref_ids)
        ref_w = ref_w / (ref_w.sum(-1, keepdim=True) + 1e-20) * 2.0
    order, ref_order = ids.sort(-1), ref_ids.sort(-1)
    assert torch.equal(order.values, ref_order.values)
    torch.testing.assert_close(w.gather(1, order.indices), ref_w.gather(1, ref_order.indices))


def test_sigmoid_bias_selects_but_does_not_weight() -> None:
    model = random_model(tiny_config("mla", "sigmoid"), seed=4)
    gate = model.language.model.layers[1].mlp.gate
    x = torch.randn(5, 64)
    with torch.no_grad():
        gate.e_score_correction_bias.zero_()
        gate.e_score_correction_bias[7] = 100.0  # expert 7 always chosen, weight from its raw sigmoid
    ids, w = gate(x)
    assert bool((ids == 7).any(-1).all())
    torch.testing.assert_close(w.sum(-1), torch.full((5,), 2.0))


def test_projector_feature_order_and_padding() -> None:
    model = random_model(tiny_config(), seed=0)
    proj = model.projector
    n, g, c = 1, 7, 48
    x = torch.randn(n, g * g, c)
    out = proj.downsample(x)  # [1, 16, 192]
    assert out.shape == (1, 16, 4 * c)
    grid = F.pad(x.view(g, g, c), (0, 0, 0, 1, 0, 1))  # [8, 8, C]
    for (i, j) in [(0, 0), (1, 2), (3, 3)]:
        for ch in (0, 5, 47):
            for kh in (0, 1):
                for kw in (0, 1):
                    assert out[0, i * 4 + j, ch * 4 + kh * 2 + kw] == grid[2 * i + kh, 2 * j + kw, ch]
    assert torch.all(out[0, 3, 1::2] == 0)  # right column of the last block is the zero pad


def test_tile_layout_2d() -> None:
    cfg = tiny_config()
    model = random_model(cfg, seed=0)
    nw, nh, g, d = 3, 2, 4, 64
    tiles = torch.randn(1 + nw * nh, g * g, d)
    seq = model.layout_image(tiles, nw, nh)
    assert seq.shape[0] == cfg.image_tokens(nw, nh) == g * (g + 1) + 1 + nh * g * (nw * g + 1)
    nl, sep = model.image_newline, model.view_seperator
    glob = seq[:g * (g + 1)].view(g, g + 1, d)
    assert torch.equal(glob[:, :g], tiles[0].view(g, g, d)) and torch.equal(glob[:, g], nl.expand(g, d))
    assert torch.equal(seq[g * (g + 1)], sep)
    loc = seq[g * (g + 1) + 1:].view(nh * g, nw * g + 1, d)
    assert torch.equal(loc[:, -1], nl.expand(nh * g, d))
    for r in range(nh):
        for cc in range(nw):
            tile = tiles[1 + r * nw + cc].view(g, g, d)
            assert torch.equal(loc[r * g:(r + 1) * g, cc * g:(cc + 1) * g], tile)


def test_image_tokens_land_at_mask_positions_in_order() -> None:
    cfg = tiny_config()
    model = random_model(cfg, seed=5)
    batch = toy_batch(cfg, [4, 6], [[(1, 1), (2, 1)], [(1, 2)]])
    emb = model.prepare_inputs_embeds(batch["input_ids"], batch["images"], batch["images_seq_mask"],
                                      batch["images_spatial_crop"])
    per = model.image_embeddings(batch["images"], batch["images_spatial_crop"])
    assert [p.shape[0] for p in per] == [cfg.image_tokens(1, 1) + cfg.image_tokens(2, 1), cfg.image_tokens(1, 2)]
    for b in range(2):
        m = batch["images_seq_mask"][b]
        assert torch.equal(emb[b, m], per[b])
        assert torch.equal(emb[b, ~m], model.language.model.embed_tokens(batch["input_ids"][b, ~m]))
    # one sample's images through the vision tower alone give the same tokens (one pass for the batch)
    alone = model.image_embeddings(batch["images"][1:], batch["images_spatial_crop"][1:])[0]
    torch.testing.assert_close(alone, per[1], atol=1e-5, rtol=1e-5)
    bad = batch["images_seq_mask"].clone()
    bad[0, -1] = True
    with pytest.raises(ValueError, match="images_seq_mask marks"):
        model.prepare_inputs_embeds(batch["input_ids"], batch["images"], bad, batch["images_spatial_crop"])


def test_text_only_forward() -> None:
    cfg = tiny_config()
    model = random_model(cfg, seed=0)
    ids = torch.tensor([[0, 11, 12, 13]])
    logits = model(ids, images=torch.zeros(1, 1, 3, 28, 28), images_seq_mask=torch.zeros(1, 4, dtype=torch.bool),
                   images_spatial_crop=torch.zeros(1, 1, 2, dtype=torch.long))
    assert logits.dtype == torch.float32 and logits.shape == (1, 4, cfg.language.vocab_size)
    torch.testing.assert_close(logits, model(ids))


def test_router_log_records_every_moe_layer() -> None:
    cfg = tiny_config("mha", layers=3)
    model = random_model(cfg, seed=0)
    log: list[torch.Tensor] = []
    model(torch.tensor([[0, 20, 21]]), router_log=log)
    assert len(log) == 2 and all(x.shape == (1, 3, 3) for x in log)  # layers 1 and 2; layer 0 is dense
    assert all(int(x.max()) < 8 for x in log)


@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_rope_stays_fp32_under_bf16(attention: str) -> None:
    """bf16 weights must not collapse far positions (issue #96): compare bf16 and fp32 runs at positions ~900."""
    assert rope_tables(torch.tensor([[999]]), 8, 10000.0)[0].dtype == torch.float32
    cfg = tiny_config(attention)
    m32 = random_model(cfg, seed=6)
    m16 = random_model(cfg, seed=6).to(torch.bfloat16)
    x = torch.randn(1, 12, 64)
    pos = torch.arange(900, 912)[None]
    a32 = m32.language.model.layers[0].self_attn
    a16 = m16.language.model.layers[0].self_attn
    mask32 = causal_mask(None, 12, 0, torch.float32, x.device)
    mask16 = causal_mask(None, 12, 0, torch.bfloat16, x.device)
    ref = a32(x, pos, mask32, None)
    got = a16(x.bfloat16(), pos, mask16, None).float()
    rel = (got - ref).norm() / ref.norm()
    assert rel < 0.03, float(rel)
    # bf16 positions would round 901 to 900: with fp32 tables neighbouring positions must differ
    c, _ = rope_tables(torch.tensor([[900, 901]]), 64, 10000.0)
    assert not torch.equal(c[..., 0, :], c[..., 1, :])


@pytest.mark.parametrize("name,total_b", [("tiny", 3.371), ("small", 16.258), ("base", 27.480)])
def test_release_parameter_counts(name: str, total_b: float) -> None:
    """Total parameters (plus the unused MAP head we do not build) match the official classes' counts."""
    with torch.device("meta"):
        model = DeepseekVL2Model(VL2Config.from_name(name))
    c, m = 1152, 4304
    map_head = c + 2 * (c * c + c) + (c * 2 * c + 2 * c) + 2 * c + (c * m + m) + (m * c + c)
    total = sum(p.numel() for p in model.parameters()) + map_head
    assert math.isclose(total / 1e9, total_b, abs_tol=5e-4)
    assert model.tokens_per_image(1, 1) == 421
    assert model.flops_per_image(2, 2) > model.flops_per_image(1, 1) > 0


def test_mla_softmax_lm_matches_transformers_native_deepseek_v2() -> None:
    """An independent implementation: transformers' own DeepseekV2 (MLA, softmax greedy routing, no renorm)
    with our weights gives the same logits. (It cannot run tiny's MHA or base's sigmoid routing.)"""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "DeepseekV2ForCausalLM"):
        pytest.skip("this transformers has no native DeepseekV2")
    cfg = tiny_config("mla", "softmax")
    L = cfg.language
    ours = random_model(cfg, seed=3)
    hf_cfg = transformers.DeepseekV2Config(
        vocab_size=L.vocab_size, hidden_size=L.hidden_size, intermediate_size=L.intermediate_size,
        moe_intermediate_size=L.moe_intermediate_size, num_hidden_layers=L.num_hidden_layers,
        num_attention_heads=L.num_attention_heads, num_key_value_heads=L.num_key_value_heads,
        n_routed_experts=L.n_routed_experts, n_shared_experts=L.n_shared_experts,
        num_experts_per_tok=L.num_experts_per_tok, first_k_dense_replace=L.first_k_dense_replace,
        topk_method="greedy", n_group=1, topk_group=1, q_lora_rank=None, kv_lora_rank=L.kv_lora_rank,
        qk_rope_head_dim=L.qk_rope_head_dim, qk_nope_head_dim=L.qk_nope_head_dim, v_head_dim=L.v_head_dim,
        norm_topk_prob=False, routed_scaling_factor=1.0, rms_norm_eps=L.rms_norm_eps,
        max_position_embeddings=L.max_position_embeddings, attn_implementation="eager")
    hf = transformers.DeepseekV2ForCausalLM(hf_cfg).eval()
    sd = {k.replace("mlp.w13", "mlp.experts.gate_up_proj").replace("mlp.w2", "mlp.experts.down_proj"): v
          for k, v in ours.language.state_dict().items()}
    result = hf.load_state_dict(sd, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    ids = torch.randint(3, L.vocab_size, (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
    torch.testing.assert_close(ours(ids), ref, atol=1e-4, rtol=1e-4)


def test_vision_tower_matches_transformers_siglip() -> None:
    """transformers' SiglipVisionModel (an independent SigLIP implementation) with our weights, fused qkv split
    into q/k/v, gives the same tokens: last layer after the final LayerNorm, no pooling head."""
    transformers = pytest.importorskip("transformers")
    cfg = tiny_config()
    v = cfg.vision
    ours = random_model(cfg, seed=13).vision
    hf_cfg = transformers.SiglipVisionConfig(hidden_size=v.width, intermediate_size=v.mlp_dim,
                                             num_hidden_layers=v.layers, num_attention_heads=v.heads,
                                             image_size=v.image_size, patch_size=v.patch_size,
                                             hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                                             vision_use_head=False, attn_implementation="eager")
    hf = transformers.SiglipVisionModel(hf_cfg).eval()
    sd = {"embeddings.patch_embedding.weight": ours.patch_embed.proj.weight,
          "embeddings.patch_embedding.bias": ours.patch_embed.proj.bias,
          "embeddings.position_embedding.weight": ours.pos_embed[0],
          "post_layernorm.weight": ours.norm.weight, "post_layernorm.bias": ours.norm.bias}
    for i, blk in enumerate(ours.blocks):
        p = f"encoder.layers.{i}."
        for name, w in zip(("q_proj", "k_proj", "v_proj"), blk.attn.qkv.weight.chunk(3)):
            sd[p + f"self_attn.{name}.weight"] = w
        for name, b in zip(("q_proj", "k_proj", "v_proj"), blk.attn.qkv.bias.chunk(3)):
            sd[p + f"self_attn.{name}.bias"] = b
        pairs = {"self_attn.out_proj": blk.attn.proj, "layer_norm1": blk.norm1, "layer_norm2": blk.norm2,
                 "mlp.fc1": blk.mlp.fc1, "mlp.fc2": blk.mlp.fc2}
        for name, mod in pairs.items():
            sd[p + name + ".weight"], sd[p + name + ".bias"] = mod.weight, mod.bias
    pre = "vision_model." if any(k.startswith("vision_model.") for k in hf.state_dict()) else ""  # 4.x vs 5.x
    result = hf.load_state_dict({pre + k: t for k, t in sd.items()}, strict=False)
    assert not result.missing_keys, result.missing_keys
    tiles = torch.rand(3, 3, v.image_size, v.image_size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref = hf(pixel_values=tiles).last_hidden_state
    torch.testing.assert_close(ours(tiles), ref, atol=1e-5, rtol=1e-5)


def test_grouped_mm_fallback_matches_kernel() -> None:
    """The per-expert fallback (used where torch._grouped_mm cannot run) equals the grouped kernel, empty
    groups included."""
    from model.vl2 import language

    a = torch.randn(11, 16)
    b = torch.randn(4, 16, 24)
    offs = torch.tensor([3, 3, 9, 11], dtype=torch.int32)
    fast = language._grouped_mm(a, b, offs)
    key = (a.device.type, a.dtype, 16, 24)
    language._GROUPED_MM_UNSUPPORTED.add(key)
    try:
        slow = language._grouped_mm(a, b, offs)
    finally:
        language._GROUPED_MM_UNSUPPORTED.discard(key)
    ref = torch.cat([a[:3] @ b[0], a[3:9] @ b[2], a[9:] @ b[3]])
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(slow, ref, atol=1e-5, rtol=1e-5)
