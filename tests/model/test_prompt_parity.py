"""The prompts of checks, grounded descriptions, find-all grounding and two-image comparisons (model.vl2.prompts)
give exactly the token ids the official ``DeepseekVLV2Processor`` gives for them (conversations path, recorded
outside the repository by tests/model/data/record_prompt_ids.py; see tests/model/data/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from model.vl2.processor import VL2Processor
from model.vl2.prompts import check_prompt, find_all_prompt

DATA = Path(__file__).parent / "data"
RECORDED = json.loads((DATA / "reference" / "prompt_cases.json").read_text(encoding="utf-8"))["cases"]

pytestmark = pytest.mark.parity

BUILT = {
    "check_yes_no": check_prompt("Is the fire exit blocked by any object?", "yes_no"),
    "check_number": check_prompt("How many pallets are on the dock?", "number"),
    "check_choice": check_prompt("Is the dock door open or closed?", "choice", ["open", "closed"]),
    "check_text": check_prompt("What is written on the label?", "text"),
    "grounded_description": check_prompt("Describe anything unsafe in this image.", "text", grounded=True),
    "find_all": find_all_prompt("pallet"),
    "two_images": check_prompt("Has the pallet on the left moved?", "yes_no", with_previous=True),
    "two_images_grounded": check_prompt("What changed since the previous image?", "text", grounded=True,
                                        with_previous=True),
}


@pytest.fixture(scope="module")
def proc() -> VL2Processor:
    return VL2Processor.from_checkpoint(DATA / "checkpoints" / "tiny")


def test_every_prompt_form_was_recorded() -> None:
    assert sorted(c["name"] for c in RECORDED) == sorted(BUILT)


@pytest.mark.parametrize("case", RECORDED, ids=[c["name"] for c in RECORDED])
def test_prompt_ids_match_official(proc: VL2Processor, case: dict) -> None:
    assert BUILT[case["name"]] == case["prompt"]
    images = [Image.open(DATA / "reference" / p).convert("RGB") for p in case["images"]]
    b = proc([BUILT[case["name"]]], [images])
    assert b.prompts == [case["sft_format"]]
    assert b.input_ids[0].tolist() == case["input_ids"]
    assert b.images_seq_mask[0].tolist() == case["images_seq_mask"]
    assert b.images_spatial_crop[0].tolist() == case["images_spatial_crop"]
