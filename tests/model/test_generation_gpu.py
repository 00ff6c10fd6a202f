"""GPU tier: bf16 CUDA against fp32 CPU on the toy model (grouped expert GEMMs, fp32 RoPE, cache on device)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tests.model.tiny import random_model, tiny_config, toy_batch

from model.vl2.generation import GenerationConfig, generate

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_cuda_bf16_close_to_cpu_fp32(attention: str) -> None:
    cfg = tiny_config(attention, "sigmoid")
    cpu = random_model(cfg, seed=31)
    gpu = random_model(cfg, seed=31).to("cuda", torch.bfloat16)
    batch = SimpleNamespace(**toy_batch(cfg, [4, 7], [[(2, 1)], [(1, 1)]], seed=2))
    ref = cpu(**vars(batch))
    got = gpu(**{k: v.to("cuda") if k != "images_spatial_crop" else v for k, v in vars(batch).items()}).cpu()
    m = batch.attention_mask
    rel = (got[m] - ref[m]).norm() / ref[m].norm()
    assert rel < 0.05, float(rel)
    g32 = random_model(cfg, seed=31).to("cuda")
    out_gpu = generate(g32, batch, GenerationConfig(max_new_tokens=8, eos_token_id=None))
    out_cpu = generate(cpu, batch, GenerationConfig(max_new_tokens=8, eos_token_id=None))
    assert out_gpu.tokens == out_cpu.tokens
