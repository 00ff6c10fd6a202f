"""Helpers for the scheduler tests: random image requests in the toy layout, the "generated alone" oracle, and
results compared as the scheduler and ``generate`` agree (``same``)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Hashable, Iterator

import pytest
import torch

from model.vl2.generation import GenerationConfig, generate
from model.vl2.modeling import DeepseekVL2Model
from model.vl2.requests import ImageRequest, PromptSpec

IMAGE_ID = 5


def make_request(model: DeepseekVL2Model, key: Hashable, crops: list[tuple[int, int]], text_lengths: list[int],
                 configs: list[GenerationConfig], seed: int) -> ImageRequest:
    """One request: its images (``crops``) and one prompt per text length, each ``[BOS] <image slots> text``."""
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    s = cfg.vision.image_size
    n_tiles = sum(1 + w * h for w, h in crops)
    tiles = torch.rand(n_tiles, 3, s, s, generator=gen) * 2 - 1  # [n_tiles, 3, S, S]
    n_img = sum(cfg.image_tokens(w, h) for w, h in crops)
    prompts = []
    for n_text, gcfg in zip(text_lengths, configs):
        text = torch.randint(10, cfg.language.vocab_size, (n_text,), generator=gen)
        ids = torch.cat([torch.tensor([cfg.language.bos_token_id]), torch.full((n_img,), IMAGE_ID), text])
        mask = torch.cat([torch.zeros(1), torch.ones(n_img), torch.zeros(n_text)]).bool()
        prompts.append(PromptSpec(ids, mask, gcfg))
    return ImageRequest(key, tiles, crops, prompts)


def generate_alone(model: DeepseekVL2Model, request: ImageRequest) -> list[list[int]]:
    """Each prompt of ``request`` generated on its own with ``generation.generate`` (batch of one, no padding)."""
    out = []
    crops = torch.tensor([request.crops or [(0, 0)]])  # [1, n_images, 2]
    for p in request.prompts:
        one = SimpleNamespace(input_ids=p.input_ids[None], images=request.tiles[None],
                              attention_mask=torch.ones(1, p.input_ids.shape[0], dtype=torch.bool),
                              images_seq_mask=p.image_mask[None], images_spatial_crop=crops)
        out.append(generate(model, one, p.config).tokens[0])
    return out


@pytest.fixture(scope="module", autouse=False)
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine, small ops in an OpenMP pool wait milliseconds for threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def same(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-5 (box scores and answer confidences are means of token probabilities, which the
    scheduler and ``generate`` compute to that precision); recursive over dicts, lists and tuples."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b
