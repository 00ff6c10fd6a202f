"""CPU bench on a small random-weight VL2-shaped model (< 1 minute): decode tokens/s at batch 1 and batch 8 and
their ratio, prefill time, and preprocessing time for a 12 MP JPEG.

    python bench/vl2_cpu.py
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from vl2_common import random_model, synthetic_batch, timed  # noqa: E402

from model.vl2.config import LanguageConfig, ProjectorConfig, VisionConfig, VL2Config  # noqa: E402
from model.vl2.generation import GenerationConfig, generate  # noqa: E402


def bench_config() -> VL2Config:
    """Release structure (MLA, 2 shared + top-6 of 32 experts, dense layer 0, SigLIP-like tower), scaled down."""
    lang = LanguageConfig(vocab_size=32000, hidden_size=512, intermediate_size=1536, moe_intermediate_size=256,
                          num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=8, n_routed_experts=32,
                          n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1, topk_method="greedy",
                          n_group=1, topk_group=1, q_lora_rank=None, kv_lora_rank=128, qk_rope_head_dim=32,
                          qk_nope_head_dim=64, v_head_dim=64, max_position_embeddings=4096, bos_token_id=0,
                          eos_token_id=1)
    cfg = VL2Config(language=lang, vision=VisionConfig(model_name="bench", image_size=112, patch_size=14, width=384,
                                                       layers=4, heads=6, mlp_ratio=3.7362),
                    projector=ProjectorConfig(input_dim=384, n_embed=512), tile_tag="2D", name="cpu-bench")
    cfg.validate()
    return cfg


def decode_rate(model, cfg: VL2Config, batch: int, new: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    b = synthetic_batch(cfg, batch, (2, 1), text_tokens=24, device="cpu")
    g1 = GenerationConfig(max_new_tokens=1, eos_token_id=None)
    gn = GenerationConfig(max_new_tokens=new, eos_token_id=None)
    generate(model, b, g1)  # warm-up
    t1 = min(timed(lambda: generate(model, b, g1))[0] for _ in range(2))
    tn = min(timed(lambda: generate(model, b, gn))[0] for _ in range(2))
    return {"batch": batch, "prompt_tokens": int(b.input_ids.shape[1]), "prefill_s": round(t1, 4),
            "decode_tokens_per_s": round(batch * (new - 1) / (tn - t1), 1)}


def preprocess_12mp() -> dict[str, object]:
    """Decode a 4000x3000 JPEG and run the processor's image path (when the processor module exists)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((4000, 3000), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    t0 = time.perf_counter()
    decoded = Image.open(io.BytesIO(data)).convert("RGB")
    decode_s = time.perf_counter() - t0
    out: dict[str, object] = {"jpeg_bytes": len(data), "decode_s": round(decode_s, 4)}
    tok_dir = Path(__file__).resolve().parent.parent / "tests" / "model" / "data" / "tokenizer"
    try:
        from model.vl2.config import VL2Config
        from model.vl2.processor import VL2Processor  # the processor helper's module
        from model.vl2.tokenizer import VL2Tokenizer

        processor = VL2Processor(VL2Tokenizer.from_dir(tok_dir), VL2Config.from_name("tiny").candidate_resolutions)
    except (ImportError, OSError, ValueError) as e:
        out["processor_s"] = None
        out["note"] = f"processor not available here ({e})"
        return out
    t0 = time.perf_counter()
    batch = processor(["<image>\nRead the label."], [[decoded]])
    out["processor_s"] = round(time.perf_counter() - t0, 4)
    out["tiles"] = int(batch.images.shape[1])
    return out


def main() -> None:
    torch.manual_seed(0)
    cfg = bench_config()
    t0 = time.perf_counter()
    model = random_model(cfg, torch.float32, "cpu")
    params = sum(p.numel() for p in model.parameters())
    r1 = decode_rate(model, cfg, 1, 24)
    r8 = decode_rate(model, cfg, 8, 24)
    report = {"threads": torch.get_num_threads(), "params_M": round(params / 1e6, 1),
              "image_tokens_2x1": cfg.image_tokens(2, 1),
              "flops_per_image_G": round(model.flops_per_image(2, 1) / 1e9, 2),
              "batch1": r1, "batch8": r8,
              "batch8_over_batch1": round(r8["decode_tokens_per_s"] / r1["decode_tokens_per_s"], 2),
              "preprocess_12mp": preprocess_12mp(), "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
