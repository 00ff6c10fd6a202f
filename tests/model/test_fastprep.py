"""The fast preprocessing path against the exact one (bit-identical to the official processor): same tile grid and
token ids, tiles within 40 dB PSNR, reduced-scale JPEG decoding where it applies, EXIF orientation as
``model.decode`` applies it. No timing here (that is ``bench/preprocess.py``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from tests.images import camera_jpeg as jpeg
from tests.images import camera_scene

from model.vl2.config import VL2Config
from model.vl2.fastprep import contain_size, fast_tiles, pad_offset, psnr
from model.vl2.processor import VL2Processor
from model.vl2.tokenizer import VL2Tokenizer

TOKENIZER = Path(__file__).parent / "data" / "tokenizer"


@pytest.fixture(scope="module")
def proc() -> VL2Processor:
    return VL2Processor(VL2Tokenizer.from_dir(TOKENIZER), VL2Config.from_name("tiny").candidate_resolutions)


def exact_tiles(proc: VL2Processor, data: bytes, cropping: bool = True) -> tuple[torch.Tensor, tuple[int, int]]:
    """The exact path as the worker feeds it: decoded, upright (``model.decode``), RGB."""
    im = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    tiles, grid = proc.image_tiles(im, cropping)
    return torch.from_numpy(np.stack(tiles)), grid


@pytest.mark.parametrize("size", [(3456, 2592), (1024, 768), (1920, 400), (300, 700)])
def test_same_grid_and_ids_and_40db(proc: VL2Processor, size: tuple[int, int]) -> None:
    """3456x2592 decodes at 1/2 (1728x1296 for a 1152x864 content); the others at full scale."""
    data = jpeg(camera_scene(*size, seed=size[0]))
    prompt = "<image>\n<|ref|>the pallet label<|/ref|>."
    exact = proc([prompt], [[Image.open(io.BytesIO(data)).convert("RGB")]])
    fast = proc([prompt], [[Image.open(io.BytesIO(data))]], exact=False)
    assert torch.equal(fast.images_spatial_crop, exact.images_spatial_crop)  # the tile grid
    assert torch.equal(fast.input_ids, exact.input_ids)
    assert torch.equal(fast.images_seq_mask, exact.images_seq_mask)
    assert fast.images.shape == exact.images.shape and fast.images.dtype == torch.float32
    worst = min(psnr(a, b) for a, b in zip(fast.images[0], exact.images[0]))
    assert worst >= 40.0, [round(psnr(a, b), 1) for a, b in zip(fast.images[0], exact.images[0])]


def test_unresized_local_tiles_are_bit_identical(proc: VL2Processor) -> None:
    """1024x768 is its own local content in a 1152x768 canvas: same pixels, same offsets, same float arithmetic."""
    data = jpeg(camera_scene(1024, 768, seed=3))
    want, grid = exact_tiles(proc, data)
    got, _ = fast_tiles(data, proc.tile_spec)
    assert grid == (3, 2)
    assert torch.equal(got[1:], want[1:])
    assert not torch.equal(got[1:, :, :, :32], torch.zeros_like(got[1:, :, :, :32]))  # pad, then content


def test_per_channel_normalisation_is_the_exact_arithmetic() -> None:
    """Means and stds that differ per channel (not the releases') take the general path: still the same floats."""
    proc = VL2Processor(VL2Tokenizer.from_dir(TOKENIZER), VL2Config.from_name("tiny").candidate_resolutions,
                        image_mean=(0.48145466, 0.4578275, 0.40821073), image_std=(0.26862954, 0.26130258, 0.27577711))
    data = jpeg(camera_scene(1024, 768, seed=4))
    want, _ = exact_tiles(proc, data)
    got, _ = fast_tiles(data, proc.tile_spec)
    assert torch.equal(got[1:], want[1:])


def test_large_jpeg_is_decoded_at_reduced_scale(proc: VL2Processor, monkeypatch: pytest.MonkeyPatch) -> None:
    import simplejpeg
    from PIL import JpegImagePlugin

    sizes: list[tuple[int, int]] = []
    real_sj, real_draft = simplejpeg.decode_jpeg, JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(simplejpeg, "decode_jpeg", lambda data, **kw: sizes.append(
        (kw["min_width"], kw["min_height"])) or real_sj(data, **kw))
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: sizes.append(size) or real_draft(self, mode, size))
    plain = Image.linear_gradient("L").convert("RGB")
    fast_tiles(jpeg(plain.resize((4000, 3000))), proc.tile_spec)  # content 1152x864: 1/2 (2000x1500) keeps 1.5x
    fast_tiles(jpeg(plain.resize((2560, 1920))), proc.tile_spec)  # 1/2 would leave 1280 < 1.5 x 1152: full size
    fast_tiles(jpeg(plain.resize((2560, 1920))), proc.tile_spec, cropping=False)  # content 384x288: 1/4
    lazy = Image.open(io.BytesIO(jpeg(plain.resize((4000, 3000)))))
    fast_tiles(lazy, proc.tile_spec)  # a PIL image not decoded yet: Pillow's draft, in place
    assert sizes == [(2000, 1500), (2560, 1920), (640, 480), (2000, 1500)] and lazy.size == (2000, 1500)
    cmyk = jpeg(plain.resize((64, 48)).convert("CMYK"))  # simplejpeg reads no CMYK: Pillow decodes it
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK"
    want, grid = exact_tiles(proc, cmyk)
    got, fast_grid = fast_tiles(cmyk, proc.tile_spec)
    assert fast_grid == grid and psnr(got, want) >= 40.0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_decode_applies_it(proc: VL2Processor, orientation: int) -> None:
    data = jpeg(camera_scene(480, 300, seed=orientation), orientation=orientation)
    want, grid = exact_tiles(proc, data)
    got, fast_grid = fast_tiles(data, proc.tile_spec)
    assert fast_grid == grid
    assert psnr(got, want) >= 40.0


def test_no_cropping_gives_global_and_one_local(proc: VL2Processor) -> None:
    data = jpeg(camera_scene(2560, 1920, seed=9))  # decoded at 1/4
    want, grid = exact_tiles(proc, data, cropping=False)
    got, fast_grid = fast_tiles(data, proc.tile_spec, cropping=False)
    assert grid == fast_grid == (1, 1) and got.shape == (2, 3, 384, 384)
    assert psnr(got, want) >= 40.0


@pytest.mark.parametrize("size,box", [((1024, 768), (1152, 768)), ((3000, 1), (384, 384)), ((7, 1000), (768, 384)),
                                      ((640, 480), (384, 384)), ((500, 500), (384, 768))])
def test_geometry_is_pillows(size: tuple[int, int], box: tuple[int, int]) -> None:
    im = Image.new("RGB", size, (255, 255, 255))
    padded = ImageOps.pad(im, box, color=(0, 0, 0))
    cw, ch = contain_size(size, box)
    x, y = pad_offset((cw, ch), box)
    bbox = padded.getbbox()
    assert bbox == ((x, y, x + cw, y + ch) if cw and ch else None)
