"""Our processor against outputs recorded from the official ``DeepseekVLV2Processor`` (conversations path, as
``inference.py`` calls it) on the committed test checkpoint and PNGs: ids exact, masks exact, tiles within 1e-6."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from model.vl2.processor import VL2Processor

DATA = Path(__file__).parent / "data"
CASES = sorted((DATA / "reference" / "processor").glob("*.safetensors"))

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def proc() -> VL2Processor:
    return VL2Processor.from_checkpoint(DATA / "checkpoints" / "tiny")


@pytest.mark.skipif(not CASES, reason="no recorded processor outputs")
@pytest.mark.parametrize("case", CASES, ids=[p.stem for p in CASES])
def test_processor_matches_official(proc: VL2Processor, case: Path) -> None:
    with safe_open(str(case), "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    images = [Image.open(DATA / "reference" / p).convert("RGB") for p in json.loads(meta["images"])]
    b = proc([meta["prompt"]], [images])
    assert b.prompts == [meta["sft_format"]]
    assert b.input_ids.tolist() == t["input_ids"].tolist()
    assert torch.equal(b.attention_mask, t["attention_mask"].bool())
    assert torch.equal(b.images_seq_mask, t["images_seq_mask"].bool())
    assert torch.equal(b.images_spatial_crop, t["images_spatial_crop"].long())
    shape = json.loads(meta["images_shape"])
    assert list(b.images.shape) == shape
    want = torch.zeros(shape)
    u8 = t["images_u8"]
    want[0, :u8.shape[0]] = (u8.float().div(255) - 0.5) / 0.5
    assert (b.images - want).abs().max().item() <= 1e-6


CASES_JSON = DATA / "reference" / "processor_cases.json"
EXTRA = json.loads(CASES_JSON.read_text(encoding="utf-8")) if CASES_JSON.is_file() else {"cases": []}


def _digest(images: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(images.float().contiguous().numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("case", EXTRA["cases"], ids=[c["name"] for c in EXTRA["cases"]])
def test_processor_cases_match_official(proc: VL2Processor, case: dict) -> None:
    """Ids, masks and crops exact; tiles bit-identical (SHA-256 of the float32 tile tensor)."""
    images = [Image.open(DATA / "reference" / p).convert("RGB") for p in case["images"]]
    b = proc([case["prompt"]], [images], apply_template=case["apply_template"])
    assert b.prompts == [case["sft_format"]]
    assert b.input_ids[0].tolist() == case["input_ids"]
    assert b.images_seq_mask[0].tolist() == case["images_seq_mask"]
    assert b.images_spatial_crop[0].tolist() == case["images_spatial_crop"]
    assert list(b.images[0].shape) == case["tiles_shape"]
    assert _digest(b.images[0]) == case["tiles_sha256"]


@pytest.mark.skipif("batch" not in EXTRA, reason="no recorded batch")
def test_left_padded_batch_matches_official(proc: VL2Processor) -> None:
    rec = EXTRA["batch"]
    by_name = {c["name"]: c for c in EXTRA["cases"]}
    cases = [by_name[n] for n in rec["cases"]]
    b = proc([c["prompt"] for c in cases],
             [[Image.open(DATA / "reference" / p).convert("RGB") for p in c["images"]] for c in cases])
    assert b.input_ids.tolist() == rec["input_ids"]
    assert b.attention_mask.tolist() == rec["attention_mask"]
    assert b.images_seq_mask.tolist() == rec["images_seq_mask"]
    assert b.images_spatial_crop.tolist() == rec["images_spatial_crop"]
    assert list(b.images.shape) == rec["tiles_shape"] and _digest(b.images) == rec["tiles_sha256"]
