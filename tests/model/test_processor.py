"""The VL2 processor against the official behaviour: tiling choice (with its tie-breaking), letterbox colour,
normalisation, tile order, image-token counts, BOS/template, per-piece tokenisation, left padding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.vl2.conversation import format_prompt
from model.vl2.processor import VL2Processor, image_token_count, select_best_resolution

DATA = Path(__file__).parent / "data"
CANDIDATES = [[384, 384], [384, 768], [768, 384], [384, 1152], [1152, 384], [384, 1536], [1536, 384], [768, 768],
              [384, 1920], [1920, 384], [384, 2304], [2304, 384], [768, 1152], [1152, 768], [384, 2688],
              [2688, 384], [384, 3072], [3072, 384], [768, 1536], [1536, 768], [384, 3456], [3456, 384],
              [1152, 1152]]
PAD_VALUE = (127 / 255 - 0.5) / 0.5  # the letterbox colour after normalisation (~ -0.0039)


@pytest.fixture(scope="module")
def proc(tmp_path_factory: pytest.TempPathFactory) -> VL2Processor:
    d = tmp_path_factory.mktemp("ckpt")
    for f in (DATA / "tokenizer").iterdir():
        shutil.copy(f, d / f.name)
    (d / "processor_config.json").write_text(json.dumps({
        "candidate_resolutions": CANDIDATES, "patch_size": 14, "downsample_ratio": 2,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "normalize": True,
        "image_token": "<image>", "pad_token": "<｜▁pad▁｜>", "sft_format": "deepseek"}))
    return VL2Processor.from_checkpoint(d)


def solid(w: int, h: int, colour: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    return Image.new("RGB", (w, h), colour)


@pytest.mark.parametrize("size, best", [
    ((384, 384), (384, 384)),
    ((1024, 768), (1152, 768)),   # 3x2: eff 786432 ties with 1536x768 and 1152x1152; least waste wins
    ((768, 1024), (768, 1152)),   # the transposed case
    ((200, 100), (384, 384)),     # upscaling earns nothing: every candidate caps at 20000, least waste wins
    ((500, 500), (768, 768)),     # capped at 250000 by 768x768 and 1152x1152; 768x768 wastes less
    ((1000, 250), (1152, 384)),   # 1152x384 is the first to reach the 250000 cap; 1536x384 wastes more
    ((4000, 3000), (1152, 1152)),  # 12 MP photo: 1152x864 content (995328) in the 3x3 grid
    ((100, 3000), (384, 3072)),   # very tall: 384x3072 is the first to reach the 300000 cap
    ((300, 3400), (384, 3456)),   # taller still: only the 1x9 column holds it all
])
def test_select_best_resolution(size: tuple[int, int], best: tuple[int, int]) -> None:
    assert select_best_resolution(size, CANDIDATES) == best


def test_select_best_resolution_first_of_full_tie_wins() -> None:
    # a square image: 384x768 and 768x384 give the same eff and waste; list order decides
    assert select_best_resolution((100, 100), [[384, 768], [768, 384]]) == (384, 768)
    assert select_best_resolution((100, 100), [[768, 384], [384, 768]]) == (768, 384)


def test_select_best_resolution_strict_comparisons_by_brute_force() -> None:
    """Every chosen candidate has the max eff, and among those the min waste, and is the first such."""
    rng = np.random.default_rng(0)
    for w, h in rng.integers(1, 5000, size=(300, 2)):
        w, h = int(w), int(h)
        scores = []
        for cw, ch in CANDIDATES:
            s = min(cw / w, ch / h)
            eff = min(int(w * s) * int(h * s), w * h)
            scores.append((-eff, cw * ch - eff))
        first_best = CANDIDATES[scores.index(min(scores))]
        assert select_best_resolution((w, h), CANDIDATES) == tuple(first_best)


@pytest.mark.parametrize("nw, nh, n", [(1, 1, 421), (2, 1, 617), (1, 2, 631), (2, 2, 1023), (3, 2, 1415),
                                       (4, 2, 1807), (3, 3, 2017), (9, 1, 1989), (1, 9, 2101)])
def test_image_token_count(nw: int, nh: int, n: int) -> None:
    assert image_token_count(nw, nh) == n


def test_one_tile_image(proc: VL2Processor) -> None:
    b = proc(["<image>\nDescribe."], [[solid(384, 384)]])
    assert int(b.images_seq_mask.sum()) == 421
    assert b.images.shape == (1, 2, 3, 384, 384)  # global + one local tile
    assert b.images_spatial_crop.tolist() == [[[1, 1]]]
    assert b.input_ids[0, 0] == proc.tokenizer.bos_id
    assert torch.equal(b.input_ids[b.images_seq_mask], torch.full((421,), proc.tokenizer.image_id))
    assert b.attention_mask.all() and b.attention_mask.dtype == torch.bool and b.images_seq_mask.dtype == torch.bool


def test_1024x768_image(proc: VL2Processor) -> None:
    b = proc(["<image>\nRead the label."], [[solid(1024, 768)]])
    assert int(b.images_seq_mask.sum()) == 1415
    assert b.images_spatial_crop.tolist() == [[[3, 2]]]
    assert b.images.shape == (1, 7, 3, 384, 384)


def test_ids_are_bos_template_pieces_and_image_slots(proc: VL2Processor) -> None:
    tok = proc.tokenizer
    b = proc(["<image>\n<|ref|>The giraffe<|/ref|>."], [[solid(384, 384)]])
    text = format_prompt("<image>\n<|ref|>The giraffe<|/ref|>.")
    assert text == "<|User|>: <image>\n<|ref|>The giraffe<|/ref|>.\n\n<|Assistant|>:"
    before, after = text.split("<image>")
    want = [tok.bos_id] + tok.encode(before) + [tok.image_id] * 421 + tok.encode(after)
    assert b.input_ids[0].tolist() == want
    assert want[-len(tok.encode("<|Assistant|>:")):] == tok.encode("<|Assistant|>:")  # no EOS at the end
    assert tok.eos_id not in want
    assert b.images_seq_mask[0].tolist() == [False] * (1 + len(tok.encode(before))) + [True] * 421 + \
        [False] * len(tok.encode(after))
    # the text around an image is never merged across the slot
    raw = proc(["a<image>b"], [[solid(10, 10)]], apply_template=False)
    assert raw.input_ids[0].tolist() == [tok.bos_id] + tok.encode("a") + [tok.image_id] * 421 + tok.encode("b")


def test_template() -> None:
    assert format_prompt("  hi  ") == "<|User|>: hi\n\n<|Assistant|>:"
    assert format_prompt("hi", system="Be brief.") == "Be brief.\n\n<|User|>: hi\n\n<|Assistant|>:"
    assert format_prompt("again", history=[("hi", "hello")]) == \
        "<|User|>: hi\n\n<|Assistant|>: hello<｜end▁of▁sentence｜><|User|>: again\n\n<|Assistant|>:"


def test_letterbox_colour_and_normalisation(proc: VL2Processor) -> None:
    # 384x192 white: global view = white band in the middle rows 96..287, pad colour 127 above and below
    b = proc(["<image>"], [[solid(384, 192)]], apply_template=False)
    g = b.images[0, 0]  # [3, 384, 384]
    assert torch.allclose(g[:, :96], torch.full_like(g[:, :96], PAD_VALUE), atol=1e-7)
    assert torch.allclose(g[:, 288:], torch.full_like(g[:, 288:], PAD_VALUE), atol=1e-7)
    assert torch.equal(g[:, 100:280], torch.ones_like(g[:, 100:280]))
    v = (np.float32(37) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    b2 = proc(["<image>"], [[solid(384, 384, (37, 37, 37))]], apply_template=False)
    assert torch.equal(b2.images[0, :2], torch.full((2, 3, 384, 384), float(v)))


def test_local_tiles_row_major_after_global(proc: VL2Processor) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    im = Image.new("RGB", (768, 768))
    for k, c in enumerate(colours):  # TL, TR, BL, BR quadrants
        im.paste(c, ((k % 2) * 384, (k // 2) * 384, (k % 2) * 384 + 384, (k // 2) * 384 + 384))
    b = proc(["<image>"], [[im]], apply_template=False)
    assert b.images_spatial_crop.tolist() == [[[2, 2]]]
    assert b.images.shape[1] == 5
    for k, c in enumerate(colours):
        tile = b.images[0, 1 + k]
        want = torch.tensor([x / 255 * 2 - 1 for x in c]).view(3, 1, 1).expand(3, 384, 384)
        assert torch.allclose(tile, want, atol=1e-6), k
    # the global view is the whole image squeezed into one tile: its quadrants carry the same colours
    assert torch.allclose(b.images[0, 0, :, 96, 96], torch.tensor([1.0, -1.0, -1.0]), atol=1e-6)


def test_wide_image_tiles_letterboxed_not_stretched(proc: VL2Processor) -> None:
    b = proc(["<image>"], [[solid(1000, 250)]], apply_template=False)  # -> 1152x384, 3x1
    assert b.images_spatial_crop.tolist() == [[[3, 1]]]
    local = torch.cat(list(b.images[0, 1:4]), dim=2)  # [3, 384, 1152]
    # aspect 4:1 in 1152x384 -> 1152x288 content, 48 px pad rows top and bottom
    assert torch.allclose(local[:, :48], torch.full_like(local[:, :48], PAD_VALUE), atol=1e-7)
    assert torch.equal(local[:, 60:320], torch.ones_like(local[:, 60:320]))


def test_more_than_two_images_disable_cropping(proc: VL2Processor) -> None:
    ims = [solid(1024, 768), solid(384, 1536), solid(50, 60)]
    b = proc(["<image><image><image>What differs?"], [ims])
    assert b.images_spatial_crop.tolist() == [[[1, 1], [1, 1], [1, 1]]]
    assert int(b.images_seq_mask.sum()) == 3 * 421
    assert b.images.shape == (1, 6, 3, 384, 384)
    two = proc(["<image><image>"], [ims[:2]])
    assert two.images_spatial_crop.tolist() == [[[3, 2], [1, 4]]]


def test_text_only(proc: VL2Processor) -> None:
    b = proc(["Hello there"], [[]])
    assert b.images.shape == (1, 1, 3, 384, 384) and not b.images.any()
    assert b.images_spatial_crop.tolist() == [[[0, 0]]]
    assert not b.images_seq_mask.any()


def test_left_padded_batch_rows_equal_single_requests(proc: VL2Processor) -> None:
    prompts = ["<image>\nA long question about the label on this box?", "<image>\nHi", "no image"]
    images = [[solid(1024, 768)], [solid(384, 384, (10, 20, 30))], []]
    b = proc(prompts, images)
    t = b.input_ids.shape[1]
    assert b.images.shape == (3, 7, 3, 384, 384) and b.images_spatial_crop.shape == (3, 1, 2)
    for i, (p, ims) in enumerate(zip(prompts, images)):
        one = proc([p], [ims])
        n = one.input_ids.shape[1]
        assert b.input_ids[i, t - n:].tolist() == one.input_ids[0].tolist()
        assert (b.input_ids[i, :t - n] == proc.tokenizer.pad_id).all()
        assert b.attention_mask[i].tolist() == [False] * (t - n) + [True] * n
        assert torch.equal(b.images_seq_mask[i, t - n:], one.images_seq_mask[0])
        assert not b.images_seq_mask[i, :t - n].any()
        k = one.images.shape[1]
        assert torch.equal(b.images[i, :k], one.images[0]) and not b.images[i, k:].any()
        assert torch.equal(b.images_spatial_crop[i, :one.images_spatial_crop.shape[1]], one.images_spatial_crop[0])


def test_placeholder_mismatch_is_an_error(proc: VL2Processor) -> None:
    with pytest.raises(ValueError):
        proc(["<image> and <image>"], [[solid(10, 10)]])
    with pytest.raises(ValueError):
        proc(["a", "b"], [[]])


def test_to_casts_images_only(proc: VL2Processor) -> None:
    b = proc(["<image>"], [[solid(20, 20)]]).to("cpu", torch.bfloat16)
    assert b.images.dtype == torch.bfloat16 and b.input_ids.dtype == torch.long
    assert b.images_seq_mask.dtype == torch.bool


def test_non_rgb_input_is_converted(proc: VL2Processor) -> None:
    grey = Image.new("L", (384, 384), 37)
    rgba = Image.new("RGBA", (384, 384), (37, 37, 37, 255))
    a, b = proc(["<image>"], [[grey]]), proc(["<image>"], [[rgba]])
    assert torch.equal(a.images, b.images)


def test_decode_keeps_grounding_tokens(proc: VL2Processor) -> None:
    text = "<|ref|>the cat<|/ref|><|det|>[[1, 2, 300, 999]]<|/det|>"
    assert proc.tokenizer.decode(proc.tokenizer.encode(text)) == text
    assert proc.tokenizer.token_id("<|det|>") in proc.tokenizer.encode(text)


def test_unusable_checkpoint_directories_are_oserrors(tmp_path: Path) -> None:
    from model.vl2.processor import ProcessorConfigError
    from model.vl2.tokenizer import TokenizerError

    with pytest.raises(ProcessorConfigError):
        VL2Processor.from_checkpoint(tmp_path)  # nothing there
    (tmp_path / "processor_config.json").write_text(json.dumps({"candidate_resolutions": CANDIDATES}))
    with pytest.raises(TokenizerError):
        VL2Processor.from_checkpoint(tmp_path)  # no tokenizer.json
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError):
        VL2Processor.from_checkpoint(tmp_path)
    (tmp_path / "processor_config.json").write_text("[1, 2")
    with pytest.raises(OSError):
        VL2Processor.from_checkpoint(tmp_path)


def test_several_prompts_about_one_image_tile_it_once(proc: VL2Processor, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (500, 900, 3), dtype=np.uint8))
    other = Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))
    prompts = ["<image>\n<|ref|>pallet<|/ref|>.", "<image>\n<|ref|>forklift<|/ref|>.", "<image>\nRead the text."]
    apart = [proc([p], [[img]]) for p in prompts] + [proc([prompts[0]], [[other]])]
    calls = []
    real = proc.image_tiles
    monkeypatch.setattr(proc, "image_tiles",
                        lambda im, cropping=True, exact=True: calls.append(im) or real(im, cropping, exact))
    together = proc(prompts + [prompts[0]], [[img], [img], [img], [other]])
    assert calls == [img, other]  # once per image, not once per prompt
    for i, one in enumerate(apart):
        n = one.input_ids.shape[1]
        assert torch.equal(together.input_ids[i, -n:], one.input_ids[0])
        k = one.images.shape[1]
        assert torch.equal(together.images[i, :k], one.images[0])
        assert torch.equal(together.images_spatial_crop[i], one.images_spatial_crop[0])
