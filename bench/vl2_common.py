"""Shared bits of the VL2 benches: random-weight models and synthetic processor-shaped batches."""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch

from model.vl2.config import VL2Config
from model.vl2.modeling import DeepseekVL2Model


def random_model(cfg: VL2Config, dtype: torch.dtype, device: str, seed: int = 0) -> DeepseekVL2Model:
    """Random weights (std 0.02, norms 1), built directly on ``device`` in ``dtype``."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = DeepseekVL2Model(cfg)
    model = model.to(dtype).to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1 and not name.endswith("bias"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)


def synthetic_batch(cfg: VL2Config, batch: int, crop: tuple[int, int], text_tokens: int,
                    device: str, image_id: int = 128815) -> SimpleNamespace:
    """``batch`` requests, each one image tiled ``crop`` = (w, h) tiles + ``text_tokens`` random text ids."""
    nw, nh = crop
    n_img = cfg.image_tokens(nw, nh)
    t = 1 + n_img + text_tokens
    vocab = cfg.language.vocab_size
    ids = torch.randint(3, min(vocab, 100000), (batch, t))
    ids[:, 0] = cfg.language.bos_token_id
    ids[:, 1:1 + n_img] = image_id % vocab
    seq_mask = torch.zeros(batch, t, dtype=torch.bool)
    seq_mask[:, 1:1 + n_img] = True
    s = cfg.vision.image_size
    return SimpleNamespace(input_ids=ids.to(device),
                           attention_mask=torch.ones(batch, t, dtype=torch.bool, device=device),
                           images=torch.rand(batch, 1 + nw * nh, 3, s, s, device=device) * 2 - 1,
                           images_seq_mask=seq_mask.to(device),
                           images_spatial_crop=torch.tensor([[[nw, nh]]] * batch))


def timed(fn, sync=lambda: None) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def toy_config() -> VL2Config:
    """The release structure at toy size (tiny's plain MHA, softmax top-k routing, dense layer 0; 28 px tiles of
    4 px patches), for CPU runs that prove a bench script works, not for figures."""
    from model.vl2.config import LanguageConfig, ProjectorConfig, VisionConfig

    lang = LanguageConfig(vocab_size=512, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                          num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8,
                          n_shared_experts=2, num_experts_per_tok=3, first_k_dense_replace=1, topk_method="greedy",
                          n_group=1, topk_group=1, max_position_embeddings=1024, bos_token_id=0, eos_token_id=1,
                          q_lora_rank=None, use_mla=False, kv_lora_rank=None, qk_rope_head_dim=0,
                          qk_nope_head_dim=0, v_head_dim=0)
    cfg = VL2Config(language=lang, vision=VisionConfig(model_name="toy", image_size=28, patch_size=4, width=48,
                                                       layers=2, heads=4, mlp_ratio=2.5),
                    projector=ProjectorConfig(input_dim=48, n_embed=64), tile_tag="2D", global_view_pos="head",
                    candidate_resolutions=[[28 * w, 28 * h] for w in (1, 2, 3) for h in (1, 2, 3)], name="toy")
    cfg.validate()
    return cfg
