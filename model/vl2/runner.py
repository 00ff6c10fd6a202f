"""The forwards the scheduler runs over a ``SlotCache``: the vision pass of one request, the prompt embeddings of
one sequence, a prefill chunk of one sequence, and a decode step of the first ``n`` slots (captured per batch-size
bucket on CUDA, see ``capture``). Every forward goes through ``placement.run_layers``, so one code path serves a
single device and layers spread across several.

The numbers are the ones ``generation.generate`` computes: positions start at 0 per sequence (fp32 RoPE), the mask
hides what a row may not see with the dtype's finite minimum, logits are fp32.
"""

from __future__ import annotations

from typing import Sequence

import torch

from model.vl2.capture import DecodeGraphs
from model.vl2.kvpool import SlotCache
from model.vl2.language import causal_mask
from model.vl2.modeling import DeepseekVL2Model
from model.vl2.placement import Placement, apply_placement, run_layers


class StepRunner:
    def __init__(self, model: DeepseekVL2Model, placement: Placement | None = None, capture: bool = True) -> None:
        self.model = model
        n_layers = len(model.language.model.layers)
        self.placement = placement or Placement.single(model.image_newline.device, n_layers)
        if placement is not None:
            apply_placement(model, placement)
        self.first, self.last = self.placement.first, self.placement.last
        self.dtype = model.image_newline.dtype
        self.capture = capture
        self.cache: SlotCache | None = None
        self.graphs: DecodeGraphs | None = None

    # ---- the pool ------------------------------------------------------------------------------------------------
    def new_cache(self, slots: int, slot_len: int) -> SlotCache:
        """Allocate the KV pool (each layer's buffers on its device) and the decode graphs that point into it."""
        self.free_cache()
        self.cache = SlotCache(self.model.cfg.language, slots, slot_len, self.placement.layer_devices(), self.dtype)
        single = len(set(self.placement.devices)) == 1
        self.graphs = DecodeGraphs(self._decode_step, self.first, slots, slot_len, enabled=self.capture and single)
        return self.cache

    def free_cache(self) -> None:
        if self.graphs is not None:
            self.graphs.reset()
        self.cache, self.graphs = None, None
        if self.first.type == "cuda":
            torch.cuda.empty_cache()

    # ---- vision and embeddings -----------------------------------------------------------------------------------
    def encode_image(self, tiles: torch.Tensor, crops: Sequence[tuple[int, int]]) -> torch.Tensor:
        """tiles [n_tiles, 3, S, S] of one request's images (global + locals per image, in order) -> the image tokens
        [n_image_tokens, D] of all its images: one vision pass shared by all of its prompts."""
        embeds = self.model.encode_tiles(tiles.to(self.first, non_blocking=True))  # [n_tiles, 196, D]
        seqs, t = [], 0
        for w, h in crops:
            seqs.append(self.model.layout_image(embeds[t:t + 1 + w * h], w, h))  # [N_image, D]
            t += 1 + w * h
        return torch.cat(seqs, dim=0)

    def prompt_embeds(self, ids: torch.Tensor, image_mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """ids [T], image_mask [T] bool, image tokens [n, D] -> input embeddings [T, D] (images written in order)."""
        embeds = self.model.language.model.embed_tokens(ids.to(self.first))  # [T, D]
        if image_tokens.shape[0] == 0:
            return embeds
        mask = image_mask.to(self.first)
        return embeds.masked_scatter(mask[:, None], image_tokens.to(embeds.dtype))

    # ---- prompt and decode forwards ------------------------------------------------------------------------------
    def prefill(self, slot: int, start: int, x: torch.Tensor, last: bool) -> torch.Tensor | None:
        """Run positions ``start .. start + t`` of the sequence in ``slot`` (x [t, D]); fp32 logits [V] of its last
        position when ``last`` (the first generated token comes from them)."""
        assert self.cache is not None
        t = x.shape[0]
        self.cache.plan_prefill(slot, start, t)
        positions = torch.arange(start, start + t, device=self.first)[None]  # [1, t]
        mask = causal_mask(None, t, start, self.dtype, self.first)  # [1, 1, t, start + t]
        hidden = run_layers(self.model, self.placement, x[None], positions, mask, self.cache)  # [1, t, D]
        return self.model.language.logits(hidden[0, -1]) if last else None

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, key_len: int) -> torch.Tensor:
        """One token for each sequence in slots ``0..n-1``: tokens, positions [n] -> fp32 logits [n, V]."""
        assert self.graphs is not None
        return self.graphs(tokens.to(self.first), positions.to(self.first), key_len)

    def _decode_step(self, tokens: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, n_view: int,
                     key_len: int) -> torch.Tensor:
        assert self.cache is not None
        self.cache.plan_decode(rows, positions, n_view, key_len)
        x = self.model.language.model.embed_tokens(tokens[:, None])  # [n, 1, D]
        visible = torch.arange(key_len, device=positions.device)[None, :] <= positions[:, None]  # [n, S]
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=positions.device)
        mask = mask.masked_fill(~visible, torch.finfo(self.dtype).min)[:, None, None]  # [n, 1, 1, S]
        hidden = run_layers(self.model, self.placement, x, positions[:, None], mask, self.cache)  # [n, 1, D]
        return self.model.language.logits(hidden[:, -1])  # [n, V]
