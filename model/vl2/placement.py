"""Layer placement across devices, for checkpoints whose weights do not fit one GPU (Small ~30 GiB, Base ~51 GiB).

A ``Placement`` names the physical devices and maps every language layer to one of them. The vision tower, the
projector, the tile indicators and the token embeddings sit with the first layer (where the prompt starts); the
final norm and ``lm_head`` with the last. Each layer's KV cache is allocated on its layer's device (``SlotCache``).
The forward hops devices only where consecutive layers change device: one copy of the hidden states [B, T, D] per
boundary (pipeline order, no overlap: the point is to fit, not to speed up).

The map holds device names, not CUDA ordinals, so CPU tests can name two "devices" that are both the CPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from model.vl2.config import VL2Config
from model.vl2.modeling import DeepseekVL2Model

HEAD = ("vision.", "projector.", "image_newline", "view_seperator", "language.model.embed_tokens.")
TAIL = ("language.model.norm.", "language.lm_head.")


@dataclass(frozen=True)
class Placement:
    """``devices[layers[i]]`` holds language layer i. ``layers`` is non-decreasing (stages in order)."""

    devices: tuple[str, ...]
    layers: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.devices or not self.layers:
            raise ValueError("a placement needs at least one device and one layer")
        if any(b < a for a, b in zip(self.layers, self.layers[1:])) or not 0 <= min(self.layers) <= max(
                self.layers) < len(self.devices):
            raise ValueError(f"layer map {self.layers} must be non-decreasing indices into {len(self.devices)} devices")

    @classmethod
    def single(cls, device: str | torch.device, n_layers: int) -> "Placement":
        return cls((str(device),), (0,) * n_layers)

    @property
    def first(self) -> torch.device:
        return torch.device(self.devices[self.layers[0]])

    @property
    def last(self) -> torch.device:
        return torch.device(self.devices[self.layers[-1]])

    def layer_devices(self) -> list[torch.device]:
        return [torch.device(self.devices[i]) for i in self.layers]

    def stages(self) -> list[tuple[int, int, int]]:
        """(device index, first layer, end layer) per contiguous run of layers."""
        out: list[tuple[int, int, int]] = []
        for i, d in enumerate(self.layers):
            if out and out[-1][0] == d:
                out[-1] = (d, out[-1][1], i + 1)
            else:
                out.append((d, i, i + 1))
        return out

    def describe(self) -> list[str]:
        n = len(self.layers)
        lines = []
        for d, lo, hi in self.stages():
            extra = (["vision tower", "projector", "embeddings"] if lo == 0 else []) + (
                ["final norm", "lm_head"] if hi == n else [])
            lines.append(f"{self.devices[d]}: layers {lo}-{hi - 1}" + (f" + {', '.join(extra)}" if extra else ""))
        return lines


def component_bytes(cfg: VL2Config, dtype: torch.dtype) -> tuple[int, list[int], int]:
    """(head bytes, bytes of each language layer, tail bytes) of the architecture."""
    size = torch.empty(0, dtype=dtype).element_size()
    head, layers, tail = _component_counts(json.dumps(cfg.to_dict(), sort_keys=True))
    return head * size, [n * size for n in layers], tail * size


@lru_cache(maxsize=16)
def _component_counts(config_json: str) -> tuple[int, tuple[int, ...], int]:
    """Parameter counts, on the meta device (no allocation; cached: plans ask for many budgets)."""
    cfg = VL2Config.from_dict(json.loads(config_json))
    with torch.device("meta"):
        model = DeepseekVL2Model(cfg)
    head, tail, layers = 0, 0, [0] * cfg.language.num_hidden_layers
    for name, p in model.named_parameters():
        if name.startswith(HEAD):
            head += p.numel()
        elif name.startswith(TAIL):
            tail += p.numel()
        else:
            layers[int(name.split(".")[3])] += p.numel()  # language.model.layers.<i>.
    return head, tuple(layers), tail


def device_weights(cfg: VL2Config, placement: Placement, dtype: torch.dtype) -> list[int]:
    """Weight bytes on each device of ``placement``."""
    head, layers, tail = component_bytes(cfg, dtype)
    out = [0] * len(placement.devices)
    out[placement.layers[0]] += head
    out[placement.layers[-1]] += tail
    for i, d in enumerate(placement.layers):
        out[d] += layers[i]
    return out


def balanced_placement(cfg: VL2Config, devices: list[str], dtype: torch.dtype) -> Placement:
    """Contiguous layer runs over ``devices`` that minimise the largest device's weights (head on the first, tail on
    the last): binary search on that largest load, greedy fill in layer order (optimal for contiguous runs)."""
    head, layers, tail = component_bytes(cfg, dtype)
    n = len(devices)

    def fill(cap: int) -> list[int] | None:
        dev, load, out = 0, head, []
        for w in layers:
            if load + w > cap:  # this layer opens the next device (the first layer stays with the head)
                dev, load = dev + 1, 0
                if not out or dev >= n or w > cap:
                    return None
            out.append(dev)
            load += w
        return out if load + tail <= cap else None

    lo, hi = max(layers), head + sum(layers) + tail
    best = fill(hi)
    assert best is not None
    while lo < hi:
        mid = (lo + hi) // 2
        got = fill(mid)
        if got is None:
            lo = mid + 1
        else:
            hi, best = mid, got
    return Placement(tuple(devices), tuple(best))


def apply_placement(model: DeepseekVL2Model, placement: Placement) -> DeepseekVL2Model:
    """Move every part of ``model`` to its device (in place; returns the model)."""
    if len(placement.layers) != len(model.language.model.layers):
        raise ValueError(f"placement maps {len(placement.layers)} layers, the model has "
                         f"{len(model.language.model.layers)}")
    first, last = placement.first, placement.last
    for module in (model.vision, model.projector, model.language.model.embed_tokens):
        module.to(first)
    for name in ("image_newline", "view_seperator"):
        p = getattr(model, name)
        setattr(model, name, nn.Parameter(p.data.to(first), requires_grad=p.requires_grad))
    for layer, dev in zip(model.language.model.layers, placement.layer_devices()):
        layer.to(dev)
    model.language.model.norm.to(last)
    model.language.lm_head.to(last)
    return model


def run_layers(model: DeepseekVL2Model, placement: Placement, x: torch.Tensor, positions: torch.Tensor,
               mask: torch.Tensor, cache: object) -> torch.Tensor:
    """The decoder stack over ``x`` [B, T, D] with device hops between stages; returns final-normed hidden states
    on the last device. ``positions`` [B, T] and the additive ``mask`` [B, 1, T, S] are copied once per stage."""
    layers = model.language.model.layers
    for k, (d, lo, hi) in enumerate(placement.stages()):
        if k:  # the next stage's device (a no-op where both name the same device, as CPU stand-ins do)
            dev = torch.device(placement.devices[d])
            x, positions, mask = x.to(dev), positions.to(dev), mask.to(dev)
        for i in range(lo, hi):
            x = layers[i](x, positions, mask, cache, None)
    return model.language.model.norm(x)
