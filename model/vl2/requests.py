"""What the scheduler serves: one ``ImageRequest`` per image (its tiles, once) with every prompt asked about it
(grounding phrases, the OCR prompt, a site's questions), and one ``RequestResult`` back when all of its prompts are
done. The image goes through the vision tower once for all of its prompts, as ``generate_many`` does. A request may
hold several images when every one of its prompts shows all of them in order (a check ``with_previous``: the
previous image, then the current one): the image slots of each prompt are filled with the request's image tokens in
order.

``image_request`` builds one from JPEG bytes or a PIL image with the processor: the fast pixel path by default
(``fastprep``; same tile grid and token ids as the exact one), ``exact=True`` for the official pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from model.vl2.fastprep import fast_tiles
from model.vl2.generation import GenerationConfig, GenerationOutput

ImageSource = bytes | Image.Image  # JPEG (or any PIL-readable) bytes, or an opened image


@dataclass
class PromptSpec:
    input_ids: torch.Tensor  # [T] int64: BOS, text pieces, image slots; no padding
    image_mask: torch.Tensor  # [T] bool: the image slots, filled in order with the request's image tokens
    config: GenerationConfig

    @property
    def positions(self) -> int:
        """KV positions this prompt may occupy: the prompt and every token it may generate."""
        return int(self.input_ids.shape[0]) + self.config.max_new_tokens


@dataclass
class ImageRequest:
    key: Hashable  # the caller's handle (e.g. (job_id, image_id)); results carry it back
    tiles: torch.Tensor  # [n_tiles, 3, S, S]: per image its global view then local tiles row-major
    crops: list[tuple[int, int]]  # per image (width tiles, height tiles)
    prompts: list[PromptSpec] = field(default_factory=list)


@dataclass
class RequestResult:
    """Per prompt, in the request's order: tokens, probabilities and finish reason (``GenerationOutput``); or the
    reason the request failed (``error``), e.g. that one image alone does not fit the memory budget."""

    key: Hashable
    output: GenerationOutput | None
    error: str | None = None


def image_request(key: Hashable, processor: Any, image: ImageSource | Sequence[ImageSource], prompts: Sequence[str],
                  config: GenerationConfig | Sequence[GenerationConfig], exact: bool = False,
                  apply_template: bool = True) -> ImageRequest:
    """One image (or several, in the order the prompts' ``<image>`` placeholders show them) and its prompts, tokenised
    as ``processor`` does. ``config`` is one for all prompts or one per prompt. JPEG bytes are turned upright by
    their EXIF orientation on both paths. As in the processor, images are cropped into local tiles when a prompt
    shows at most two."""
    configs = [config] * len(prompts) if isinstance(config, GenerationConfig) else list(config)
    if len(configs) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(configs)} generation configs")
    images = list(image) if isinstance(image, (list, tuple)) else [image]
    cropping = len(images) <= 2
    tiles, grids = [], []
    for source in images:
        if exact:
            im = source if isinstance(source, Image.Image) else ImageOps.exif_transpose(Image.open(io.BytesIO(source)))
            arrays, grid = processor.image_tiles(im.convert("RGB"), cropping)
            tiles.append(torch.from_numpy(np.stack(arrays)))  # [n_tiles, 3, S, S]
        else:
            t, grid = fast_tiles(source, processor.tile_spec, cropping)
            tiles.append(t)
        grids.append(grid)
    specs = []
    for prompt, cfg in zip(prompts, configs):
        text = processor.format_prompt(prompt) if apply_template else prompt
        ids, mask = processor.tokens(text, grids)
        specs.append(PromptSpec(torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.bool), cfg))
    return ImageRequest(key, torch.cat(tiles), grids, specs)


def requests_from_batch(batch: Any, configs: Sequence[GenerationConfig], keys: Sequence[Hashable]) -> list[ImageRequest]:
    """One request per row of a processor-shaped batch (left padding stripped): each row its own images."""
    out = []
    for b, (cfg, key) in enumerate(zip(configs, keys)):
        keep = batch.attention_mask[b].bool()
        crops = [(int(w), int(h)) for w, h in batch.images_spatial_crop[b].tolist() if w and h]
        n_tiles = sum(1 + w * h for w, h in crops)
        out.append(ImageRequest(key, batch.images[b, :n_tiles], crops,
                                [PromptSpec(batch.input_ids[b, keep], batch.images_seq_mask[b, keep].bool(), cfg)]))
    return out


def outputs_in_order(results: dict[Hashable, RequestResult], keys: Sequence[Hashable]) -> GenerationOutput:
    """The prompts of ``keys``' requests, concatenated in that order, as one ``GenerationOutput`` (the layout of
    ``generate_many``: request i's prompts, then request i + 1's). Raises on a failed request."""
    tokens, probs, finish, prompt_tokens = [], [], [], []
    for key in keys:
        res = results[key]
        if res.output is None:
            raise RuntimeError(f"request {key!r} failed: {res.error}")
        tokens += res.output.tokens
        probs += res.output.probs
        finish += res.output.finish
        prompt_tokens += res.output.prompt_tokens
    return GenerationOutput(tokens=tokens, probs=probs, finish=finish, prompt_tokens=prompt_tokens)
