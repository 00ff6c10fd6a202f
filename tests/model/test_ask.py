"""vl2-ask on tiny release-layout checkpoints: one vision pass per image for all its checks (counted), answers of
every kind from a model scripted to answer "No, 2 open.", expectations, no_previous, grounded boxes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from model.analyzers import AnalyzerResult
from model.vl2.ask import build_ask_analyzer
from model.vl2.ask import Check, CheckAnswer, VL2AskAnalyzer
from model.vl2.tokenizer import VL2Tokenizer
from tests.model.tiny import TOKENIZER_DIR, random_model, scripted_model, tiny_config, write_release_dir

CHECKS = [
    {"name": "exit", "question": "Is the fire exit blocked by any object?", "kind": "yes_no",
     "expect": {"equals": False}, "severity": "high"},
    {"name": "pallets", "question": "How many pallets are on the dock?", "kind": "number", "expect": {"max": 1}},
    {"name": "door", "question": "Is the dock door open or closed?", "kind": "choice", "choices": ["open", "closed"],
     "expect": {"equals": "closed"}},
    {"name": "summary", "question": "Describe anything unsafe in this image.", "kind": "text", "grounded": True},
    {"name": "moved", "question": "Has the pallet on the left moved?", "kind": "yes_no", "with_previous": True},
]


def _ask(ckpt: Path, **extra: object) -> VL2AskAnalyzer:
    return build_ask_analyzer("vl2-ask", {"checkpoint": str(ckpt), "device": "cpu", "dtype": "float32",
                                          "checks": CHECKS, "max_new_tokens": 12} | extra)


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_release_dir(tmp_path_factory.mktemp("rnd"), random_model(tiny_config("mla", vocab=400), seed=4))


@pytest.fixture(scope="module")
def scripted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = scripted_model(tiny_config("mha", vocab=400), VL2Tokenizer.from_dir(TOKENIZER_DIR), "No, 2 open.")
    return write_release_dir(tmp_path_factory.mktemp("scr"), model)


def test_one_vision_pass_per_image_for_all_checks(random_dir: Path) -> None:
    """Three images, two with a previous image (one of them an image of the batch itself): the vision tower runs
    once, on the tiles of the four distinct images -- not once per prompt."""
    an = _ask(random_dir, images_per_batch=8, max_new_tokens=3)
    calls: list[int] = []
    hook = an.model.vision.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    try:
        images = [Image.new("RGB", (60, 40), (200, 0, 0)), Image.new("RGB", (30, 90), (0, 0, 200)),
                  Image.new("RGB", (50, 50), (9, 9, 9))]
        earlier = Image.new("RGB", (70, 30), (0, 120, 0))
        results = an.analyze(images, previous=[None, earlier, images[1]])
    finally:
        hook.remove()
    tiles = {id(im): 1 + (lambda w, h: w * h)(*an.processor.image_tiles(im)[1]) for im in [*images, earlier]}
    prompts = sum(len(CHECKS) - (p is None) for p in [None, earlier, images[1]])
    assert calls == [sum(tiles.values())]  # one call, each distinct image's tiles once
    assert prompts == 14 and sum(tiles.values()) < prompts * min(tiles.values())
    assert [len(r.answers) for r in results] == [5, 5, 5]
    assert [a.status for a in results[0].answers][-1] == "no_previous"
    assert all(a.status in ("ok", "unparsed") for r in results[1:] for a in r.answers)


def test_answers_are_the_same_batched_or_alone(random_dir: Path) -> None:
    an = _ask(random_dir, images_per_batch=4, max_new_tokens=4)
    images = [Image.new("RGB", (60, 40), (200, 0, 0)), Image.new("RGB", (30, 90), (0, 0, 200))]
    together = an.analyze(images, previous=[images[1], None])
    alone = [an.analyze([images[0]], previous=[images[1]])[0], an.analyze([images[1]])[0]]
    assert [[a.raw for a in r.answers] for r in together] == [[a.raw for a in r.answers] for r in alone]


def test_scripted_answers_parse_into_every_kind(scripted_dir: Path) -> None:
    an = _ask(scripted_dir)
    first, second = Image.new("RGB", (60, 40), (200, 0, 0)), Image.new("RGB", (30, 90), (0, 0, 200))
    results = an.analyze([first, second], previous=[None, first])
    assert all(isinstance(r, AnalyzerResult) and r.detections.kind == "objects" and not len(r.detections)
               for r in results)
    got = {a.check.name: a for a in results[1].answers}
    assert {n: (a.status, a.value, a.passed) for n, a in got.items()} == {
        "exit": ("ok", False, True), "pallets": ("ok", 2, False), "door": ("ok", "open", False),
        "summary": ("ok", "No, 2 open.", None), "moved": ("ok", False, None)}
    assert all(a.raw == "No, 2 open." and a.confidence is not None and a.confidence > 0.99 for a in got.values())
    assert got["moved"].paired and not got["exit"].paired
    before = {a.check.name: a for a in results[0].answers}["moved"]
    assert (before.status, before.raw, before.passed, before.paired) == ("no_previous", None, None, False)
    lineage = results[0].lineage
    assert lineage.analyzer == "vl2-ask" and lineage.checkpoint_digest.startswith("sha256:")
    assert "This is the previous image: <image>\nThis is the current image: <image>\n" in lineage.prompt


def test_rows_put_the_value_in_its_typed_column(scripted_dir: Path) -> None:
    an = _ask(scripted_dir)
    rows = {a.check.name: a.to_row() for a in an.analyze([Image.new("RGB", (40, 40))])[0].answers}
    assert (rows["exit"]["value_bool"], rows["exit"]["value_number"], rows["exit"]["value_text"]) == (False, None,
                                                                                                      None)
    assert (rows["pallets"]["value_number"], rows["pallets"]["expected"], rows["pallets"]["passed"]) == (2.0,
                                                                                                         {"max": 1},
                                                                                                         False)
    assert (rows["door"]["value_text"], rows["exit"]["severity"]) == ("open", "high")
    assert rows["moved"]["status"] == "no_previous" and rows["moved"]["raw_text"] is None


def test_grounded_answer_boxes_and_prose(scripted_dir: Path) -> None:
    an = _ask(scripted_dir)
    tok = an.processor.tokenizer
    answer = "Yes, <|ref|>the pallet<|/ref|><|det|>[[0, 0, 499, 999]]<|/det|> blocks the exit."
    ids = tok.encode(answer)
    check = Check("blocked", "Is the exit blocked?", "yes_no", grounded=True)
    got = an._answer(check, (200, 100), ids, [0.5] * len(ids))
    assert (got.status, got.value, got.raw) == ("ok", True, answer)
    assert got.detections is not None and got.detections.labels == ("the pallet",)
    assert got.detections.xyxy[0].tolist() == pytest.approx([0.0, 0.0, 499 / 999 * 200, 100.0])


def test_unparsed_answer_keeps_raw_text_and_neither_passes_nor_fails() -> None:
    check = Check("exit", "Is the exit blocked?", "yes_no", expect=None)
    answer = CheckAnswer(check, "unparsed", "Maybe.", None, 0.3, "does not start with yes or no")
    assert answer.passed is None and answer.to_row()["raw_text"] == "Maybe."


@pytest.mark.parametrize(("fields", "message"), [
    ({"kind": "count"}, "unknown kind 'count'"),
    ({"question": "Is <image> here?"}, "markup"),
    ({"kind": "choice", "choices": ("open",)}, "at least two choices"),
])
def test_bad_checks(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Check(**({"name": "c", "question": "Is it?", "kind": "yes_no"} | fields))


def test_no_checks_is_an_error(random_dir: Path) -> None:
    with pytest.raises(ValueError, match="at least one check"):
        build_ask_analyzer("vl2-ask", {"checkpoint": str(random_dir), "device": "cpu", "dtype": "float32"})


def test_generate_rows_equals_generate_many_for_single_images(random_dir: Path) -> None:
    """With one image per prompt the shared-vision path gives what ``generate_many`` gives."""
    from model.vl2.ask import generate_rows
    from model.vl2.generation import GenerationConfig, generate_many

    an = _ask(random_dir)
    images = [Image.new("RGB", (60, 40), (200, 0, 0)), Image.new("RGB", (30, 90), (0, 0, 200))]
    prompts = ["<image>\nIs it red?", "<image>\nFind all the <|ref|>box<|/ref|>."]
    cfg = GenerationConfig(max_new_tokens=5, eos_token_id=1)
    want = generate_many(an.model, an.processor, images, prompts, cfg)
    got = generate_rows(an.model, an.processor, [(p, [im]) for im in images for p in prompts], cfg)
    assert got.tokens == want.tokens
    assert torch.allclose(torch.tensor(got.probs), torch.tensor(want.probs))
