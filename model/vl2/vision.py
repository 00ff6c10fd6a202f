"""SigLIP ViT as DeepSeek-VL2 runs it: conv patch embed, learned pos_embed, pre-norm blocks, final LayerNorm.

Output is every patch token of the last block after the final norm (no CLS, no pooling; the checkpoint's MAP
``attn_pool`` head is never used and is not built here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.vl2.config import VisionConfig


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # [n, C, g, g]
        return x.flatten(2).transpose(1, 2)  # [n, g*g, C], row-major patches


class Attention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=True)
        self.proj = nn.Linear(cfg.width, cfg.width, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        qkv = self.qkv(x).view(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # [3, n, h, t, hd]
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [n, h, t, hd], scale hd^-0.5
        return self.proj(out.transpose(1, 2).reshape(n, t, c))


class Mlp(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim, bias=True)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=1e-6)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=1e-6)
        self.mlp = Mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """``forward(tiles [n, 3, S, S]) -> [n, grid*grid, width]``."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(tiles) + self.pos_embed  # [n, 729, 1152]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def flops_per_tile(self) -> int:
        """Forward FLOPs for one tile (2 per multiply-add; patch embed, blocks, attention scores)."""
        c, t, m, p = self.cfg.width, self.cfg.grid ** 2, self.cfg.mlp_dim, self.cfg.patch_size
        per_block = 2 * t * (3 * c * c + c * c + 2 * c * m) + 2 * 2 * t * t * c
        return 2 * t * 3 * p * p * c + self.cfg.layers * per_block
