"""The prompt kinds the analyzers run, through the real processor and tokenizer of a tiny release directory: grounding
(one referring prompt per phrase about one image) and OCR, served by the scheduler, give ``generate_many``'s ids."""

from __future__ import annotations

import io
import pytest
import torch
from PIL import Image
from tests.model.scheduling import one_thread  # noqa: F401 (fixture)
from tests.model.tiny import TOKENIZER_DIR, random_model, tiny_config, write_release_dir

from model.vl2 import grounding
from model.vl2.generation import GenerationConfig, generate_many
from model.vl2.processor import VL2Processor
from model.vl2.requests import image_request, outputs_in_order
from model.vl2.scheduler import Scheduler, SchedulerConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple:  # type: ignore[type-arg]
    if not TOKENIZER_DIR.is_dir():
        pytest.skip("the test tokenizer (tests/model/data/tokenizer) is not there")
    model = random_model(tiny_config("mla", vocab=400), seed=2)
    path = write_release_dir(tmp_path_factory.mktemp("rel"), model)
    return model, VL2Processor.from_checkpoint(path)


def _jpeg(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, color)
    img.paste((255 - color[0], 40, 90), (size[0] // 4, size[1] // 3, size[0] // 2, size[1] // 2))
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_grounding_and_ocr_match_generate_many(release: tuple) -> None:  # type: ignore[type-arg]
    model, proc = release
    images = [_jpeg((60, 40), (200, 10, 10)), _jpeg((30, 90), (10, 10, 200)), _jpeg((50, 50), (9, 9, 9))]
    phrases = [grounding.referring_prompt(p) for p in ("red box", "person", "pallet label")]
    ground_cfg = GenerationConfig(max_new_tokens=6, eos_token_id=proc.tokenizer.eos_id)
    ocr_cfg = GenerationConfig(max_new_tokens=9, eos_token_id=proc.tokenizer.eos_id, repeat_ngram=4)
    reqs = [image_request(("ground", i), proc, data, phrases, ground_cfg, exact=True) for i, data in enumerate(images)]
    reqs += [image_request(("ocr", i), proc, data, [grounding.ocr_prompt()], ocr_cfg, exact=True)
             for i, data in enumerate(images)]
    results = Scheduler(model, SchedulerConfig(max_batch=4, prefill_chunk=32)).run(reqs)
    pil = [Image.open(io.BytesIO(d)).convert("RGB") for d in images]
    want_ground = generate_many(model, proc, pil, phrases, ground_cfg)
    want_ocr = generate_many(model, proc, pil, [grounding.ocr_prompt()], ocr_cfg)
    got_ground = outputs_in_order(results, [("ground", i) for i in range(3)])
    got_ocr = outputs_in_order(results, [("ocr", i) for i in range(3)])
    assert got_ground.tokens == want_ground.tokens and got_ground.finish == want_ground.finish
    assert got_ocr.tokens == want_ocr.tokens and got_ocr.finish == want_ocr.finish
    torch.testing.assert_close(torch.tensor([p for ps in got_ocr.probs for p in ps]),
                               torch.tensor([p for ps in want_ocr.probs for p in ps]), atol=1e-5, rtol=1e-4)


def test_fast_request_has_the_exact_requests_ids_and_grid(release: tuple) -> None:  # type: ignore[type-arg]
    _, proc = release
    data = _jpeg((300, 170), (30, 160, 60))
    prompts = [grounding.referring_prompt("crate"), grounding.ocr_prompt()]
    fast = image_request("a", proc, data, prompts, GenerationConfig())
    exact = image_request("a", proc, data, prompts, GenerationConfig(), exact=True)
    assert fast.crops == exact.crops and fast.tiles.shape == exact.tiles.shape
    for f, e in zip(fast.prompts, exact.prompts):
        assert torch.equal(f.input_ids, e.input_ids) and torch.equal(f.image_mask, e.image_mask)
    batch = proc(prompts, [[Image.open(io.BytesIO(data)).convert("RGB")]] * 2)
    assert batch.input_ids[0, batch.attention_mask[0]].tolist() == exact.prompts[0].input_ids.tolist()
    assert torch.equal(batch.images[0, :exact.tiles.shape[0]], exact.tiles)


def test_failed_request_raises_from_outputs_in_order() -> None:
    from model.vl2.requests import RequestResult

    with pytest.raises(RuntimeError, match="request 'x' failed: too big"):
        outputs_in_order({"x": RequestResult("x", None, "too big")}, ["x"])
