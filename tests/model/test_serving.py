"""The VL2 analyzers' prompts served by the scheduler (``model.vl2.serving``): one request per image for grounding,
OCR and the checks about the image alone, one more for the checks that compare with the previous image; the results
equal ``analyze()``'s (greedy ids identical, so identical rows), on a tiny random checkpoint in the release layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from model.vl2.analyzer import build_vl2_analyzer
from model.vl2.ask import build_ask_analyzer
from model.vl2.requests import RequestResult
from model.vl2.scheduler import Scheduler, SchedulerConfig
from model.vl2.serving import image_prompts, results_of
from tests.model.scheduling import one_thread, same  # noqa: F401 (one_thread: a fixture)
from tests.model.tiny import TOKENIZER_DIR, random_model, tiny_config, write_release_dir

pytestmark = pytest.mark.usefixtures("one_thread")

CHECKS = [
    {"name": "exit", "question": "Is the fire exit blocked by any object?", "kind": "yes_no"},
    {"name": "summary", "question": "Describe anything unsafe in this image.", "kind": "text", "grounded": True},
    {"name": "moved", "question": "Has the pallet on the left moved?", "kind": "yes_no", "with_previous": True},
]


@pytest.fixture(scope="module")
def analyzers(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    if not TOKENIZER_DIR.is_dir():
        pytest.skip("the test tokenizer (tests/model/data/tokenizer) is not there")
    ckpt = write_release_dir(tmp_path_factory.mktemp("rel"), random_model(tiny_config("mla", vocab=400), seed=7))
    common = {"checkpoint": str(ckpt), "device": "cpu", "dtype": "float32", "images_per_batch": 4}
    return [build_vl2_analyzer("vl2-ground", common | {"phrases": ["pallet", "person"], "max_new_tokens": 5}),
            build_vl2_analyzer("vl2-ocr", common | {"max_new_tokens": 24}),
            build_ask_analyzer("vl2-ask", common | {"checks": CHECKS, "max_new_tokens": 7})]


def _image(size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    im = Image.new("RGB", size, colour)
    im.paste((255 - colour[0], 40, 90), (size[0] // 4, size[1] // 3, size[0] // 2, size[1] // 2))
    return im


def _rows(result: Any) -> dict[str, Any]:
    return {"detections": result.detections.to_rows(), "lineage": result.lineage.as_dict(),
            "answers": [a.to_row() for a in result.answers]}


def test_scheduled_prompts_give_the_analyzers_results(analyzers: list[Any]) -> None:
    first, second, third = _image((60, 40), (200, 10, 10)), _image((30, 90), (10, 10, 200)), _image((50, 50), (9, 9, 9))
    images, previous = [first, second, third], [None, first, first]
    want = [a.analyze(images, previous=previous) if a.name == "vl2-ask" else a.analyze(images) for a in analyzers]

    prompts = [image_prompts(i, analyzers, im, prev, exact=True) for i, (im, prev) in enumerate(zip(images, previous))]
    assert [[r.key for r in p.requests] for p in prompts] == [
        [(0, "image")], [(1, "image"), (1, "pair")], [(2, "image"), (2, "pair")]]
    assert [p.prompts for p in prompts] == [2 + 1 + 2, 2 + 1 + 3, 2 + 1 + 3]
    assert [len(r.crops) for r in prompts[1].requests] == [1, 2]  # the pair shows the previous image, then this one
    sched = Scheduler(analyzers[0].model, SchedulerConfig(max_batch=5, prefill_chunk=64))
    results = sched.run([r for p in prompts for r in p.requests])
    assert sched.stats["max_active"] == 5  # prompts of several images decoded together
    for i, p in enumerate(prompts):
        got = results_of(analyzers, p, results)
        for a, (g, w) in enumerate(zip(got, [want[a][i] for a in range(len(analyzers))])):
            assert same(_rows(g), _rows(w)), (analyzers[a].name, i, _rows(g), _rows(w))
    statuses = [[a.status for a in want[2][i].answers] for i in range(3)]
    assert statuses[0][2] == "no_previous" and "no_previous" not in statuses[1] + statuses[2]
    assert any(len(want[1][i].detections) for i in range(3))  # OCR read something: the comparison has rows


def test_a_failed_request_raises_its_reason(analyzers: list[Any]) -> None:
    p = image_prompts("x", analyzers[:2], _image((40, 40), (0, 90, 0)))
    (request,) = p.requests
    with pytest.raises(RuntimeError, match="one image alone does not fit"):
        results_of(analyzers[:2], p, {request.key: RequestResult(request.key, None, "one image alone does not fit")})


def test_analyzers_of_different_models_are_refused(analyzers: list[Any], tmp_path: Path) -> None:
    other = write_release_dir(tmp_path, random_model(tiny_config("mla", vocab=400), seed=8))
    ocr = build_vl2_analyzer("vl2-ocr", {"checkpoint": str(other), "device": "cpu", "dtype": "float32"})
    with pytest.raises(ValueError, match="share one model"):
        image_prompts("x", [analyzers[0], ocr], _image((40, 40), (0, 90, 0)))
