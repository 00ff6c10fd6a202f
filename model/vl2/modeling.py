"""The whole DeepSeek-VL2 model: vision tower -> projector -> 2D tile layout -> merged into text embeddings ->
DeepSeekMoE language model -> fp32 logits. Parameter names are the official checkpoint's (see ``loader``)."""

from __future__ import annotations

import torch
from torch import nn

from model.vl2.config import VL2Config
from model.vl2.language import DeepseekV2ForCausalLM, KVCache, MoE
from model.vl2.projector import MlpProjector
from model.vl2.vision import VisionTransformer


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] bool -> [B, T] int64 positions: 0 at each sequence's first real token (left padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class DeepseekVL2Model(nn.Module):
    def __init__(self, cfg: VL2Config) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.projector.n_embed
        self.vision = VisionTransformer(cfg.vision)
        self.projector = MlpProjector(cfg.projector)
        self.image_newline = nn.Parameter(torch.zeros(d))
        self.view_seperator = nn.Parameter(torch.zeros(d))  # (sic) the official name
        self.language = DeepseekV2ForCausalLM(cfg.language)

    # ---- images ---------------------------------------------------------------------------------------------
    def encode_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        """tiles [n, 3, 384, 384] -> [n, 196, D] (vision + projector)."""
        return self.projector(self.vision(tiles.to(self.image_newline.dtype)))

    def layout_image(self, tile_embeds: torch.Tensor, width_tiles: int, height_tiles: int) -> torch.Tensor:
        """One image's tiles [1 + nw*nh, hw, D] (global first, locals row-major) -> its token sequence [N, D]:
        global grid + newline column, view separator, stitched local grid + newline column ("head" order)."""
        _, hw, d = tile_embeds.shape
        g = int(round(hw ** 0.5))
        nl = self.image_newline.to(tile_embeds.dtype)
        glob = tile_embeds[0].view(g, g, d)  # [14, 14, D]
        glob = torch.cat([glob, nl.expand(g, 1, d)], dim=1).reshape(-1, d)  # [14*15, D]
        loc = tile_embeds[1:1 + width_tiles * height_tiles]  # [nh*nw, 196, D]
        loc = loc.view(height_tiles, width_tiles, g, g, d).permute(0, 2, 1, 3, 4)  # [nh, 14, nw, 14, D]
        loc = loc.reshape(height_tiles * g, width_tiles * g, d)  # [nh*14, nw*14, D]
        loc = torch.cat([loc, nl.expand(height_tiles * g, 1, d)], dim=1).reshape(-1, d)  # [nh*14*(nw*14+1), D]
        sep = self.view_seperator.to(tile_embeds.dtype)[None]
        parts = [glob, sep, loc] if self.cfg.global_view_pos == "head" else [loc, sep, glob]
        return torch.cat(parts, dim=0)

    def image_embeddings(self, images: torch.Tensor, images_spatial_crop: torch.Tensor) -> list[torch.Tensor]:
        """images [B, max_tiles, 3, H, W], crops [B, max_images, 2] (w, h tiles; a zero row ends a sample's list)
        -> per sample, its images' tokens concatenated [n_b, D] (empty for text-only). One vision pass."""
        crops = images_spatial_crop.tolist()
        counts: list[list[tuple[int, int]]] = []
        tiles = []
        for b, rows in enumerate(crops):
            sample: list[tuple[int, int]] = []
            for w, h in rows:
                if w == 0 or h == 0:
                    break
                sample.append((w, h))
            n = sum(1 + w * h for w, h in sample)
            counts.append(sample)
            tiles.append(images[b, :n])
        d = self.cfg.projector.n_embed
        all_tiles = torch.cat(tiles, dim=0)  # [total_tiles, 3, H, W]
        if all_tiles.shape[0] == 0:
            return [self.image_newline.new_zeros(0, d) for _ in crops]
        embeds = self.encode_tiles(all_tiles)  # [total_tiles, 196, D]
        out, t = [], 0
        for sample in counts:
            seqs = []
            for w, h in sample:
                seqs.append(self.layout_image(embeds[t:t + 1 + w * h], w, h))
                t += 1 + w * h
            out.append(torch.cat(seqs, dim=0) if seqs else embeds.new_zeros(0, d))
        return out

    def prepare_inputs_embeds(self, input_ids: torch.Tensor, images: torch.Tensor | None = None,
                              images_seq_mask: torch.Tensor | None = None,
                              images_spatial_crop: torch.Tensor | None = None,
                              image_embeds: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Text embeddings [B, T, D] with image tokens written at ``images_seq_mask`` positions, in order.
        ``image_embeds`` (from ``image_embeddings``) skips the vision pass (one image, several prompts)."""
        embeds = self.language.model.embed_tokens(input_ids)  # [B, T, D]
        if image_embeds is None:
            if images is None or images_spatial_crop is None or images_seq_mask is None:
                return embeds
            image_embeds = self.image_embeddings(images, images_spatial_crop)
        flat = torch.cat([e.to(embeds.dtype) for e in image_embeds], dim=0)  # [sum n_b, D]
        if flat.shape[0] == 0:
            return embeds
        if images_seq_mask is None:
            raise ValueError("images_seq_mask is required with images")
        mask = images_seq_mask.bool()
        n_slots = int(mask.sum())
        if n_slots != flat.shape[0]:
            raise ValueError(f"images_seq_mask marks {n_slots} positions but the images give {flat.shape[0]} tokens")
        return embeds.masked_scatter(mask[..., None], flat)

    # ---- forward ----------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                images: torch.Tensor | None = None, images_seq_mask: torch.Tensor | None = None,
                images_spatial_crop: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                router_log: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Full forward without cache -> fp32 logits [B, T, V]. Positions come from the attention mask (equal to
        0..T-1 without padding). ``router_log``, if a list, receives each MoE layer's expert ids [B, T, k]."""
        if inputs_embeds is None:
            inputs_embeds = self.prepare_inputs_embeds(input_ids, images, images_seq_mask, images_spatial_crop)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        hidden = self.language(inputs_embeds, positions_from_mask(attention_mask), attention_mask.bool(),
                               None, router_log)
        return self.language.logits(hidden)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.image_newline
        return KVCache(self.cfg.language, batch, max_len, p.device, p.dtype)

    # ---- cost -------------------------------------------------------------------------------------------------
    def tokens_per_image(self, width_tiles: int = 1, height_tiles: int = 1) -> int:
        return self.cfg.image_tokens(width_tiles, height_tiles)

    def active_language_params(self) -> int:
        """Parameters one token touches in the LM (no embedding, no lm_head; k routed experts per MoE layer)."""
        lang = self.cfg.language
        total = 0
        for layer in self.language.model.layers:
            for name, p in layer.named_parameters():
                if isinstance(layer.mlp, MoE) and name in ("mlp.w13", "mlp.w2"):
                    total += p.numel() // p.shape[0] * (lang.num_experts_per_tok or 0)
                else:
                    total += p.numel()
        return total

    def flops_per_image(self, width_tiles: int = 1, height_tiles: int = 1) -> int:
        """Forward FLOPs to encode one image and prefill its tokens through the LM (linear layers only for the LM;
        context-dependent attention-score FLOPs are left out)."""
        n_tiles = 1 + width_tiles * height_tiles
        p = self.cfg.projector
        hw = (-(-self.cfg.vision.grid // p.downsample_ratio)) ** 2
        proj = 2 * hw * sum(m.weight.numel() for m in self.projector.layers if isinstance(m, nn.Linear))
        vis = self.vision.flops_per_tile()
        return n_tiles * (vis + proj) + 2 * self.tokens_per_image(width_tiles, height_tiles) * \
            self.active_language_params()
