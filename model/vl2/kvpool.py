"""The scheduler's KV cache: a pool of fixed-length slots allocated once for the memory budget and reused across
requests (MLA: the compressed latent cache, 576 values per token per layer for the releases).

Why slots and not pages. A VL2 request's length is known when it is admitted (prompt + ``max_new_tokens``) and is
dominated by its image tokens (1415 of ~1470 for a 1024x768 grounding prompt), so a slot sized for the longest
admitted request wastes little: the difference between a 12-token and a 200-token answer, ~12 % of a slot. In
exchange every sequence is contiguous, so a decode step attends to strided views ``[:n, ..., :S]`` of the pool: no
gather of pages (which in eager PyTorch would copy the whole cache every step, doubling the memory traffic of a
memory-bound step), no paged-attention kernel, and fixed shapes that CUDA graphs can capture. Decoding sequences are
kept in slots ``0..n-1`` (the scheduler moves one sequence's KV when another retires), so those views need no
index. A longer request than the slots hold makes the scheduler drain and reallocate the pool (see
``Scheduler``); paging would avoid that drain but buys nothing for the fixed camera resolutions a site runs.

Each layer's buffers live on that layer's device (see ``placement``). Row ``slots`` is a scratch row: padding rows
of a captured decode step write there.
"""

from __future__ import annotations

from typing import Sequence

import torch

from model.vl2.config import LanguageConfig


class SlotCache:
    """Per layer: MHA ``k, v [slots + 1, H, slot_len, d]``; MLA ``latent [slots + 1, slot_len, r]``,
    ``k_pe [slots + 1, slot_len, rope]``. ``plan_prefill``/``plan_decode`` say where the next forward writes;
    attention modules then call ``update`` (the same contract as ``language.KVCache``)."""

    def __init__(self, cfg: LanguageConfig, slots: int, slot_len: int, devices: Sequence[torch.device | str],
                 dtype: torch.dtype) -> None:
        if len(devices) != cfg.num_hidden_layers:
            raise ValueError(f"{len(devices)} layer devices for {cfg.num_hidden_layers} layers")
        self.slots, self.slot_len, self.mla = slots, slot_len, cfg.use_mla
        self.devices = [torch.device(d) for d in devices]
        rows = slots + 1
        if self.mla:
            assert cfg.kv_lora_rank is not None
            shapes = ((rows, slot_len, cfg.kv_lora_rank), (rows, slot_len, cfg.qk_rope_head_dim))
        else:
            shape = (rows, cfg.num_attention_heads, slot_len, cfg.head_dim)
            shapes = (shape, shape)
        self.a = [torch.zeros(shapes[0], device=d, dtype=dtype) for d in self.devices]
        self.b = [torch.zeros(shapes[1], device=d, dtype=dtype) for d in self.devices]
        self._plan: tuple = ("none",)
        self._index: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    # ---- where the next forward writes ----------------------------------------------------------------------
    def plan_prefill(self, slot: int, start: int, length: int) -> None:
        """One sequence in ``slot`` writes positions ``start .. start + length``; it attends to ``0 .. end``."""
        if start + length > self.slot_len:
            raise ValueError(f"KV slot overflow: {start + length} positions > slot_len {self.slot_len}")
        self._plan = ("prefill", slot, start, start + length)

    def plan_decode(self, rows: torch.Tensor, positions: torch.Tensor, n_view: int, key_len: int) -> None:
        """Row i of the step writes its one token at slot ``rows[i]``, position ``positions[i]``; every row attends
        to slots ``0 .. n_view`` and positions ``0 .. key_len`` (the caller masks what a row may not see)."""
        self._plan = ("decode", n_view, key_len)
        self._index = {rows.device: (rows, positions)}

    def _decode_index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._index:  # another layer device: one small copy per step and device
            rows, pos = next(iter(self._index.values()))
            self._index[device] = (rows.to(device), pos.to(device))
        return self._index[device]

    def update(self, layer: int, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's entries (MHA [B, H, T, d]; MLA [B, T, r] and [B, T, rope]) and return the views that
        attention reads."""
        ka, kb = self.a[layer], self.b[layer]
        if self._plan[0] == "prefill":
            _, slot, start, end = self._plan
            if self.mla:
                ka[slot, start:end], kb[slot, start:end] = a[0], b[0]
                return ka[slot:slot + 1, :end], kb[slot:slot + 1, :end]  # [1, end, r], [1, end, rope]
            ka[slot, :, start:end], kb[slot, :, start:end] = a[0], b[0]
            return ka[slot:slot + 1, :, :end], kb[slot:slot + 1, :, :end]  # [1, H, end, d]
        if self._plan[0] != "decode":
            raise RuntimeError("SlotCache.update before plan_prefill/plan_decode")
        _, n_view, key_len = self._plan
        rows, pos = self._decode_index(ka.device)
        if self.mla:
            ka.index_put_((rows, pos), a[:, 0])  # [n, r] at (slot, position)
            kb.index_put_((rows, pos), b[:, 0])
            return ka[:n_view, :key_len], kb[:n_view, :key_len]  # [n, S, r], [n, S, rope]
        ka[rows, :, pos] = a[:, :, 0]  # [n, H, d] at (slot, :, position)
        kb[rows, :, pos] = b[:, :, 0]
        return ka[:n_view, :, :key_len], kb[:n_view, :, :key_len]  # [n, H, S, d]

    # ---- moving sequences between slots ----------------------------------------------------------------------
    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` positions of slot ``src`` into slot ``dst`` in every layer."""
        for buf in self.a + self.b:
            if self.mla:
                buf[dst, :length] = buf[src, :length]
            else:
                buf[dst, :, :length] = buf[src, :, :length]

    def swap(self, i: int, j: int, length_i: int, length_j: int) -> None:
        """Exchange the contents of two slots (through a copy of the shorter-lived one's positions)."""
        scratch = self.slots
        self.move(i, scratch, length_i)
        self.move(j, i, length_j)
        self.move(scratch, j, length_i)

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in self.a + self.b)

    def bytes_per_slot(self) -> int:
        return self.nbytes() // (self.slots + 1)
