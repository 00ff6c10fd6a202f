"""What fits a GPU memory budget: weights, KV per token, the largest concurrent batch and the tiles in flight, the
largest tiling one request can have, and the layer placement when the weights do not fit one GPU.

Every figure comes from ``memory.estimate_memory`` with ``prefill_batch=1`` (the scheduler encodes and prefills one
request at a time while the others decode), split per device by the placement: device d holds its weights, the KV
cache of its layers, and (conservatively) the whole activation estimate. On one GPU that is exactly
``estimate.total <= budget``. The scheduler sizes its KV pool with the same function (``max_batch``), so
``vlwatch model plan`` prints what the worker will do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from model.vl2.config import VL2Config
from model.vl2.memory import MemoryEstimate, estimate_memory, kv_bytes_per_token
from model.vl2.placement import Placement, balanced_placement, device_weights

GiB = 1 << 30
_UNITS = {"": GiB, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 10**6, "mb": 10**6, "mib": 1 << 20,
          "g": GiB, "gb": 10**9, "gib": GiB, "t": 1 << 40, "tb": 10**12, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """"10GiB", "10G" (binary), "10GB" (decimal), "512MiB", "24" (GiB) -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise ValueError(f"not a memory size: {text!r} (examples: 10GiB, 24G, 80GB, 512MiB)")
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class Workload:
    """One request as the estimate sees it: one image tiled (width tiles, height tiles), its prompt text, and the
    new tokens it may generate."""

    tiles: tuple[int, int] = (3, 2)  # 1024x768 over the release candidates
    text_tokens: int = 20
    new_tokens: int = 256
    prefill_chunk: int | None = 2048  # the scheduler's default


def estimate(cfg: VL2Config, batch: int, work: Workload, dtype: torch.dtype) -> MemoryEstimate:
    return estimate_memory(cfg, batch, work.tiles, dtype, work.new_tokens, work.text_tokens, work.prefill_chunk,
                           prefill_batch=1)


def device_totals(est: MemoryEstimate, weights: list[int], layers: list[int]) -> list[int]:
    """Bytes on each device: its weights, the KV of its layers (``layers[d]`` of them), all activations."""
    n_layers = sum(layers)
    return [w + est.kv_cache * n // n_layers + est.activations for w, n in zip(weights, layers)]


def largest(fits: Callable[[int], bool], cap: int) -> int:
    """The largest b in 0..cap with ``fits(b)`` (``fits`` is monotone: more requests never need less)."""
    if not fits(1):
        return 0
    lo, hi = 1, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def max_batch(cfg: VL2Config, budget: int, work: Workload, dtype: torch.dtype, placement: Placement | None = None,
              cap: int = 1024) -> int:
    """The most concurrent requests of ``work`` whose estimate fits ``budget`` bytes on every device."""
    weights, layers = split_by_device(cfg, placement, dtype)
    return largest(lambda b: max(device_totals(estimate(cfg, b, work, dtype), weights, layers)) <= budget, cap)


def alone_message(cfg: VL2Config, work: Workload, dtype: torch.dtype, placement: Placement | None,
                  budget: int | None, why: str) -> str:
    """Why one request fails on its own: what it needs per GPU (the estimate for a batch of one) and the budget."""
    est = estimate(cfg, 1, work, dtype)
    need = max(device_totals(est, *split_by_device(cfg, placement, dtype)))
    limit = f"{budget / GiB:.2f} GiB per GPU" if budget is not None else "not set (the whole device)"
    return (f"one image alone does not fit: it needs about {need / GiB:.2f} GiB per GPU (weights "
            f"{est.weights / GiB:.2f} GiB, KV {est.kv_cache / GiB:.2f} GiB, activations {est.activations / GiB:.2f} "
            f"GiB) and the memory budget is {limit}; {why}")


@dataclass(frozen=True)
class Plan:
    variant: str
    dtype: torch.dtype
    budget: int  # bytes per GPU
    gpus: int
    work: Workload
    weights: int
    kv_per_token: int  # bytes over all layers
    tokens_per_request: int  # positions a request occupies: prompt + new tokens
    max_batch: int  # concurrent requests of ``work`` (0: not even one fits)
    max_tiling: tuple[int, int] | None  # the candidate tiling with the most image tokens one request alone fits
    gpus_needed: int | None  # when nothing fits: the fewest GPUs of this budget that hold one request (<= 16)
    cap: int  # the batch the search stopped at (the scheduler's max_batch)
    placement: Placement | None  # None: the weights fit one GPU
    device_bytes: list[int]  # per device at max_batch (at 1 when nothing fits)
    estimate: MemoryEstimate  # at max(max_batch, 1)

    @property
    def tiles_per_request(self) -> int:
        return 1 + self.work.tiles[0] * self.work.tiles[1]

    @property
    def tiles_in_flight(self) -> int:
        return self.max_batch * self.tiles_per_request

    def lines(self) -> list[str]:
        g = GiB
        nw, nh = self.work.tiles
        fits_one = self.placement is None
        out = [f"DeepSeek-VL2 {self.variant}, {str(self.dtype).removeprefix('torch.')}, "
               f"budget {self.budget / g:.2f} GiB per GPU x {self.gpus}",
               f"weights           {self.weights / g:.2f} GiB" + ("" if fits_one else " (more than one GPU holds)"),
               f"KV per token      {self.kv_per_token / 1024:.1f} KiB (all layers)",
               f"request           {nw}x{nh} local tiles + global = {self.tiles_per_request} tiles, "
               f"{self.tokens_per_request} positions ({self.work.new_tokens} new) = "
               f"{self.kv_per_token * self.tokens_per_request / (1 << 20):.0f} MiB of KV",
               f"activations       {self.estimate.activations / g:.2f} GiB (one vision pass, prefill chunk "
               f"{self.work.prefill_chunk or 'whole prompt'})"]
        if self.max_batch:
            capped = f" (the max batch {self.cap}: more memory than needed)" if self.max_batch == self.cap else ""
            out.append(f"largest batch     {self.max_batch} concurrent requests, {self.tiles_in_flight} tiles in "
                       f"flight: {max(self.device_bytes) / g:.2f} GiB on the fullest GPU{capped}")
        else:
            more = f"; {self.gpus_needed} GPUs of this budget would hold it" if self.gpus_needed else ""
            out.append(f"largest batch     0: one request needs {max(self.device_bytes) / g:.2f} GiB on the fullest "
                       f"GPU, over the budget{more}")
        if self.max_tiling:
            mw, mh = self.max_tiling
            out.append(f"largest tiling    one request of up to {mw}x{mh} local tiles ({1 + mw * mh} tiles) fits")
        if self.placement is None:
            out.append("placement         one GPU holds everything" if self.max_batch else
                       "placement         the weights and one request do not fit one GPU (give --gpus)")
        else:
            out.append("placement         layer by layer (each layer's KV cache on its GPU):")
            out += [f"  {line}: {b / g:.2f} GiB" for line, b in zip(self.placement.describe(), self.device_bytes)]
        return out


def make_plan(variant_or_cfg: str | VL2Config, budget: int, gpus: int = 1, dtype: torch.dtype = torch.bfloat16,
              work: Workload = Workload(), cap: int = 256) -> Plan:
    """What fits ``gpus`` GPUs of ``budget`` bytes each. The layers are spread only when one GPU cannot hold the
    weights and one request."""
    cfg = VL2Config.from_name(variant_or_cfg) if isinstance(variant_or_cfg, str) else variant_or_cfg
    placement = None
    if gpus > 1 and max_batch(cfg, budget, work, dtype, None, 1) == 0:
        placement = balanced_placement(cfg, [f"cuda:{i}" for i in range(gpus)], dtype)
    best = max_batch(cfg, budget, work, dtype, placement, cap)
    needed = None
    if best == 0:
        needed = next((n for n in range(max(gpus, 1) + 1, 17) if max_batch(
            cfg, budget, work, dtype, balanced_placement(cfg, [f"cuda:{i}" for i in range(n)], dtype), 1)), None)
    est = estimate(cfg, max(best, 1), work, dtype)
    weights, layers = split_by_device(cfg, placement, dtype)
    s = cfg.vision.image_size
    tilings = sorted({(w // s, h // s) for w, h in cfg.candidate_resolutions}, key=lambda t: cfg.image_tokens(*t))
    fitting = [t for t in tilings
               if max_batch(cfg, budget, Workload(t, work.text_tokens, work.new_tokens, work.prefill_chunk), dtype,
                            placement, 1)]
    return Plan(variant=cfg.name, dtype=dtype, budget=budget, gpus=gpus, work=work, weights=est.weights,
                kv_per_token=kv_bytes_per_token(cfg, dtype), tokens_per_request=est.tokens_per_request + work.new_tokens,
                max_batch=best, max_tiling=fitting[-1] if fitting else None, gpus_needed=needed, cap=cap,
                placement=placement,
                device_bytes=device_totals(est, weights, layers), estimate=est)


def split_by_device(cfg: VL2Config, placement: Placement | None, dtype: torch.dtype) -> tuple[list[int], list[int]]:
    """(weight bytes, number of layers) per device."""
    if placement is None:
        return [estimate_memory(cfg, 1, dtype=dtype).weights], [cfg.language.num_hidden_layers]
    layers = [placement.layers.count(d) for d in range(len(placement.devices))]
    return device_weights(cfg, placement, dtype), layers
