"""Parity with values recorded from the official DeepSeek-VL2 implementation by the reference helper
(tests/model/data: tiny/small/base-shaped random checkpoints in the release layout, see its README).

Layout: ``reference/processor/<case>.safetensors`` holds the official processor's outputs (``input_ids``,
``attention_mask``, ``images_seq_mask``, ``images_spatial_crop``, tiles as ``images_u8`` [n_tiles, 3, S, S],
normalised here as ``(u8 / 255 - 0.5) / 0.5``); ``reference/<variant>/<case>.safetensors`` holds what the official
model computed from them: fp32 ``logits`` at ``logits_positions``, greedy ``generated_ids`` and the experts each
MoE layer chose (``experts.layerN`` [1, T, k]). We feed the recorded inputs and require logits within 1e-3 max
abs, identical greedy ids and identical expert sets for every token.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from model.vl2.generation import GenerationConfig, generate
from model.vl2.loader import load_model

DATA = Path(__file__).parent / "data"
REF = DATA / "reference"
VARIANTS = ("tiny", "small", "base")
CASES = sorted(p for v in VARIANTS for p in (REF / v).glob("*.safetensors")) if REF.is_dir() else []

pytestmark = pytest.mark.parity

_MODELS: dict[str, torch.nn.Module] = {}


def _model(variant: str) -> torch.nn.Module:
    if variant not in _MODELS:
        _MODELS[variant] = load_model(DATA / "checkpoints" / variant, dtype=torch.float32, digest=False)[0]
    return _MODELS[variant]


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _inputs(ref_meta: dict[str, str]) -> SimpleNamespace:
    t, meta = _load(REF / ref_meta["inputs"])
    shape = json.loads(meta["images_shape"])  # [1, max_tiles, 3, S, S]
    images = torch.zeros(shape)
    u8 = t["images_u8"]
    images[0, :u8.shape[0]] = (u8.float() / 255.0 - 0.5) / 0.5
    return SimpleNamespace(input_ids=t["input_ids"].long(), attention_mask=t["attention_mask"].bool(), images=images,
                           images_seq_mask=t["images_seq_mask"].bool(),
                           images_spatial_crop=t["images_spatial_crop"].long())


@pytest.mark.skipif(not CASES, reason="no recorded reference values under tests/model/data/reference yet")
@pytest.mark.parametrize("case", CASES, ids=[f"{p.parent.name}-{p.stem}" for p in CASES])
def test_forward_matches_official(case: Path) -> None:
    ref, meta = _load(case)
    model = _model(meta.get("variant", case.parent.name))
    batch = _inputs(meta)
    router_log: list[torch.Tensor] = []
    with torch.no_grad():
        logits = model(batch.input_ids, batch.attention_mask, batch.images, batch.images_seq_mask,
                       batch.images_spatial_crop, router_log=router_log)
    pos = ref["logits_positions"].long()
    diff = (logits[0, pos] - ref["logits"][0].float()).abs().max().item()
    assert diff <= 1e-3, f"logits differ by {diff}"
    want = ref["generated_ids"].long()
    out = generate(model, batch, GenerationConfig(max_new_tokens=want.shape[1], eos_token_id=None))
    assert out.tokens == want.tolist()
    keys = sorted((k for k in ref if k.startswith("experts.")), key=lambda k: int(re.findall(r"\d+", k)[-1]))
    assert len(keys) == len(router_log), (keys, len(router_log))
    m = batch.attention_mask
    for key, ours in zip(keys, router_log):
        theirs = ref[key].long().reshape(ours.shape)  # [1, T, k]
        same = (ours.sort(-1).values == theirs.sort(-1).values).all(-1)[m]
        assert bool(same.all()), f"{key}: expert choices differ at {int((~same).sum())} of {int(m.sum())} tokens"
