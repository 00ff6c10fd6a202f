"""Projector: 2x2 "pixel shuffle" of the 27x27 ViT grid (zero-padded to 28x28) then Linear-GELU-Linear."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.vl2.config import ProjectorConfig


class MlpProjector(nn.Module):
    """``forward([n, g*g, C]) -> [n, ceil(g/2)**2, D]``; module names match the official ``projector.layers.*``."""

    def __init__(self, cfg: ProjectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        r, hid = cfg.downsample_ratio, cfg.n_embed * cfg.mlp_ratio
        mods: list[nn.Module] = [nn.Linear(cfg.input_dim * r * r, hid)]
        for _ in range(1, cfg.depth - 1):
            mods += [nn.GELU(), nn.Linear(hid, hid)]
        mods += [nn.GELU(), nn.Linear(hid, cfg.n_embed)]  # nn.GELU = exact (erf)
        self.layers = nn.Sequential(*mods)

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        """[n, g*g, C] -> [n, (g')^2, C*r*r], feature index = c*r*r + kh*r + kw (channel-major)."""
        n, hw, c = x.shape
        r = self.cfg.downsample_ratio
        g = int(round(hw ** 0.5))
        pad = (r - g % r) % r
        x = x.reshape(n, g, g, c)  # [n, 27, 27, C]
        if pad:
            x = F.pad(x, (0, 0, 0, pad, 0, pad))  # [n, 28, 28, C], zeros at bottom and right
        x = x.permute(0, 3, 1, 2)  # [n, C, 28, 28]
        x = F.unfold(x, kernel_size=r, stride=r)  # [n, C*4, 196]
        return x.transpose(1, 2)  # [n, 196, C*4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.downsample(x))
