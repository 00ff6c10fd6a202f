"""The DeepSeek-VL2 processor: prompts + PIL images -> a left-padded ``VL2Batch`` (official behaviour of
``DeepseekVLV2Processor``, prompt path, inference mode, ``force_batchify``).

Per image: ``select_best_resolution`` over the candidate resolutions (only when the sample has <= 2 images;
else one 384x384 local view), a global view ``ImageOps.pad(image, (384, 384), color=127)``, the local view
``ImageOps.pad(image, (best_w, best_h), color=127)`` cut into 384x384 tiles row-major, each tile
``/255`` then ``(x - mean) / std``. Tokens: ``[BOS]`` + the text pieces around each ``<image>`` tokenised
separately + per image ``g*(g+1) + 1 + (nh*g)*(nw*g + 1)`` image tokens (g = 14 for 384 px / 14 px patches).

``exact=True`` (the default) is that official pixel path, bit for bit; ``exact=False`` takes ``model.vl2.fastprep``
(same tile grid and token ids, reduced-scale JPEG decode and one shared resize, PSNR >= 40 dB against exact).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from model.vl2.conversation import format_prompt
from model.vl2.fastprep import fast_tiles, tile_spec
from model.vl2.tiling import select_best_resolution
from model.vl2.tokenizer import IMAGE, PAD, VL2Tokenizer


class ProcessorConfigError(OSError):
    """A checkpoint directory's processor files are missing or unusable (an OSError, like the loader's errors,
    so that callers treat "this checkpoint cannot be used" the same way)."""


def image_token_count(width_tiles: int, height_tiles: int, image_size: int = 384, patch_size: int = 14,
                      downsample_ratio: int = 2) -> int:
    """``<image>`` tokens for one image: global rows + newlines, separator, local grid rows + newlines."""
    g = math.ceil((image_size // patch_size) / downsample_ratio)
    return g * (g + 1) + 1 + (height_tiles * g) * (width_tiles * g + 1)


@dataclass
class VL2Batch:
    """Model inputs for B samples (see the NET/PROC contract)."""

    input_ids: torch.Tensor  # [B, T] int64, left-padded with pad id
    attention_mask: torch.Tensor  # [B, T] bool
    images: torch.Tensor  # [B, max_tiles, 3, S, S] float32; per sample img1 global, img1 locals..., zero pad
    images_seq_mask: torch.Tensor  # [B, T] bool
    images_spatial_crop: torch.Tensor  # [B, max_images, 2] int64 (width tiles, height tiles); zero rows pad
    prompts: list[str] | None = None  # the text each sample was tokenised from (after the template)

    def to(self, device: Any, dtype: torch.dtype | None = None) -> "VL2Batch":
        """Move every tensor to ``device``; ``dtype`` applies to ``images`` only."""
        return VL2Batch(self.input_ids.to(device), self.attention_mask.to(device),
                        self.images.to(device=device, dtype=dtype or self.images.dtype),
                        self.images_seq_mask.to(device), self.images_spatial_crop.to(device), self.prompts)


@dataclass
class _Sample:
    ids: list[int]
    seq_mask: list[bool]
    tiles: list[np.ndarray]  # each [3, S, S] float32
    crops: list[tuple[int, int]]


class VL2Processor:
    """``VL2Processor.from_checkpoint(dir)`` then ``processor(prompts, images)`` -> ``VL2Batch``."""

    def __init__(self, tokenizer: VL2Tokenizer, candidate_resolutions: Sequence[Sequence[int]],
                 patch_size: int = 14, downsample_ratio: int = 2,
                 image_mean: Sequence[float] = (0.5, 0.5, 0.5), image_std: Sequence[float] = (0.5, 0.5, 0.5),
                 normalize: bool = True, image_token: str = IMAGE, sft_format: str = "deepseek") -> None:
        if sft_format != "deepseek":
            raise ValueError(f"only the 'deepseek' template is implemented, not {sft_format!r}")
        self.tokenizer = tokenizer
        self.candidate_resolutions = [(int(w), int(h)) for w, h in candidate_resolutions]
        self.image_size = self.candidate_resolutions[0][0]
        self.patch_size, self.downsample_ratio = int(patch_size), int(downsample_ratio)
        self.image_mean = np.asarray(image_mean, dtype=np.float32)
        self.image_std = np.asarray(image_std, dtype=np.float32)
        self.normalize = normalize
        self.image_token = image_token
        # official: tuple(int(x * 255) for x in mean) -> 127 for 0.5
        self.pad_color = tuple(int(x * 255) for x in image_mean)
        self.tile_spec = tile_spec(self.candidate_resolutions, self.image_size, self.pad_color, image_mean,
                                   image_std, normalize)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "VL2Processor":
        """Read ``processor_config.json`` (falling back to ``config.json``'s ``candidate_resolutions``) and the
        tokenizer files of a release-layout checkpoint directory."""
        path = Path(path)
        cfg: dict[str, Any] = {}
        try:
            pfile = path / "processor_config.json"
            if pfile.is_file():
                cfg = json.loads(pfile.read_text(encoding="utf-8"))
            if "candidate_resolutions" not in cfg:
                mfile = path / "config.json"
                model_cfg = json.loads(mfile.read_text(encoding="utf-8")) if mfile.is_file() else {}
                if "candidate_resolutions" not in model_cfg:
                    raise ProcessorConfigError(f"{path}: no candidate_resolutions in processor_config.json "
                                               "or config.json")
                cfg["candidate_resolutions"] = model_cfg["candidate_resolutions"]
            image_token = cfg.get("image_token", IMAGE)
            tok = VL2Tokenizer.from_dir(path, pad=cfg.get("pad_token", PAD), image=image_token)
            return cls(tok, cfg["candidate_resolutions"], patch_size=cfg.get("patch_size", 14),
                       downsample_ratio=cfg.get("downsample_ratio", 2),
                       image_mean=cfg.get("image_mean", (0.5,) * 3), image_std=cfg.get("image_std", (0.5,) * 3),
                       normalize=cfg.get("normalize", True), image_token=image_token,
                       sft_format=cfg.get("sft_format", "deepseek"))
        except (ValueError, TypeError, KeyError) as e:  # bad JSON, bad field types
            raise ProcessorConfigError(f"{path}: unusable processor configuration: {e}") from e

    # ---- text ------------------------------------------------------------------------------------------
    def format_prompt(self, content: str, system: str = "") -> str:
        """The official ``deepseek`` template around one user turn."""
        return format_prompt(content, system)

    def image_tokens(self, width_tiles: int, height_tiles: int) -> int:
        return image_token_count(width_tiles, height_tiles, self.image_size, self.patch_size, self.downsample_ratio)

    # ---- images ----------------------------------------------------------------------------------------
    def _to_array(self, tile: Image.Image) -> np.ndarray:
        """ToTensor (/255) then Normalize, in float32 as torchvision does: [3, S, S]."""
        x = np.asarray(tile, dtype=np.uint8).astype(np.float32) / np.float32(255)  # [S, S, 3]
        if self.normalize:
            x = (x - self.image_mean) / self.image_std
        return np.ascontiguousarray(x.transpose(2, 0, 1))  # [3, S, S]

    def image_tiles(self, image: Image.Image, cropping: bool = True,
                    exact: bool = True) -> tuple[list[np.ndarray], tuple[int, int]]:
        """(global view + local tiles row-major, (width tiles, height tiles)) for one image."""
        if not exact:
            tiles, grid = fast_tiles(image, self.tile_spec, cropping)
            return list(tiles.numpy()), grid  # views of one array
        if image.mode != "RGB":
            image = image.convert("RGB")
        s = self.image_size
        best_w, best_h = select_best_resolution(image.size, self.candidate_resolutions) if cropping else (s, s)
        tiles = [self._to_array(ImageOps.pad(image, (s, s), color=self.pad_color))]
        local = ImageOps.pad(image, (best_w, best_h), color=self.pad_color)
        for y in range(0, best_h, s):
            for x in range(0, best_w, s):
                tiles.append(self._to_array(local.crop((x, y, x + s, y + s))))
        return tiles, (best_w // s, best_h // s)

    def process_one(self, text: str, images: Sequence[Image.Image],
                    tile_cache: dict[tuple[int, bool], Any] | None = None, exact: bool = True) -> _Sample:
        """Token ids (BOS first, no EOS), image mask, tiles and crops of one already-templated prompt.
        ``tile_cache`` (by image object) lets several prompts about one image tile and normalise it once."""
        n_slots = text.count(self.image_token)
        if n_slots != len(images):
            raise ValueError(f"the prompt has {n_slots} {self.image_token} placeholders "
                             f"but {len(images)} images were given")
        cropping = len(images) <= 2
        tiles: list[np.ndarray] = []
        crops: list[tuple[int, int]] = []
        for image in images:
            key = (id(image), cropping)
            if tile_cache is not None and key in tile_cache:
                t, grid = tile_cache[key]
            else:
                t, grid = self.image_tiles(image, cropping, exact)
                if tile_cache is not None:
                    tile_cache[key] = (t, grid)
            tiles += t
            crops.append(grid)
        ids, mask = self.tokens(text, crops)
        return _Sample(ids, mask, tiles, crops)

    def tokens(self, text: str, crops: Sequence[tuple[int, int]]) -> tuple[list[int], list[bool]]:
        """Token ids (BOS first, no EOS) and image-slot mask of one templated prompt whose images tile as ``crops``
        (width tiles, height tiles): each text piece around an ``<image>`` is tokenised on its own."""
        pieces = text.split(self.image_token)
        if len(pieces) - 1 != len(crops):
            raise ValueError(f"the prompt has {len(pieces) - 1} {self.image_token} placeholders "
                             f"but {len(crops)} images were given")
        ids: list[int] = [self.tokenizer.bos_id]
        mask: list[bool] = [False]
        for i, piece in enumerate(pieces):
            toks = self.tokenizer.encode(piece) if piece else []
            ids += toks
            mask += [False] * len(toks)
            if i < len(crops):
                n = self.image_tokens(*crops[i])
                ids += [self.tokenizer.image_id] * n
                mask += [True] * n
        return ids, mask

    def __call__(self, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]],
                 apply_template: bool = True, exact: bool = True) -> VL2Batch:
        """One prompt per sample with ``<image>`` placeholders matching that sample's images; ``exact=False`` takes
        the fast pixel path (see the module docstring)."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} image lists")
        if not prompts:
            raise ValueError("empty batch")
        texts = [self.format_prompt(p) if apply_template else p for p in prompts]
        cache: dict[tuple[int, bool], Any] = {}  # the images outlive the call, so their ids stay unique in it
        samples = [self.process_one(t, imgs, cache, exact) for t, imgs in zip(texts, images)]
        b, t = len(samples), max(len(s.ids) for s in samples)
        s = self.image_size
        max_tiles = max(max(len(x.tiles) for x in samples), 1)
        max_images = max(max(len(x.crops) for x in samples), 1)
        input_ids = torch.full((b, t), self.tokenizer.pad_id, dtype=torch.long)
        attention_mask = torch.zeros(b, t, dtype=torch.bool)
        seq_mask = torch.zeros(b, t, dtype=torch.bool)
        pixels = torch.zeros(b, max_tiles, 3, s, s, dtype=torch.float32)
        spatial = torch.zeros(b, max_images, 2, dtype=torch.long)
        for i, smp in enumerate(samples):
            n = len(smp.ids)
            input_ids[i, t - n:] = torch.tensor(smp.ids, dtype=torch.long)
            attention_mask[i, t - n:] = True
            seq_mask[i, t - n:] = torch.tensor(smp.seq_mask, dtype=torch.bool)
            for j, tile in enumerate(smp.tiles):  # one copy per tile, straight into the batch
                pixels[i, j] = torch.from_numpy(tile)  # [3, S, S]
            if smp.crops:
                spatial[i, :len(smp.crops)] = torch.tensor(smp.crops, dtype=torch.long)
        return VL2Batch(input_ids, attention_mask, pixels, seq_mask, spatial, texts)
