"""Random, very small DeepSeek-VL2 checkpoints in the official release layout (sparse config.json + safetensors
under official key names), for CPU tests until recorded reference checkpoints exist."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from model.vl2.config import LanguageConfig, ProjectorConfig, VisionConfig, VL2Config
from model.vl2.loader import to_official_state_dict
from model.vl2.modeling import DeepseekVL2Model


def tiny_config(attention: str = "mha", routing: str = "softmax", vocab: int = 160, layers: int = 3) -> VL2Config:
    """A toy config with the release structure: 28px tiles of 4px patches -> 7x7 grid -> 4x4 after the 2x2
    shuffle (odd grid, so the 27 -> 28 padding path runs). attention: "mha" (tiny) or "mla" (small/base);
    routing: "softmax" (greedy, tiny/small) or "sigmoid" (noaux_tc, base)."""
    d = 64
    lang: dict[str, Any] = dict(vocab_size=vocab, hidden_size=d, intermediate_size=96, moe_intermediate_size=32,
                                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                                n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=3,
                                first_k_dense_replace=1, topk_method="greedy", n_group=1, topk_group=1,
                                max_position_embeddings=512, bos_token_id=0, eos_token_id=1, q_lora_rank=None)
    if attention == "mha":
        lang.update(use_mla=False, kv_lora_rank=None, qk_rope_head_dim=0, qk_nope_head_dim=0, v_head_dim=0)
    else:
        lang.update(use_mla=True, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16)
    if routing == "sigmoid":
        lang.update(topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.0)
    cfg = VL2Config(language=LanguageConfig(**lang),
                    vision=VisionConfig(model_name="toy", image_size=28, patch_size=4, width=48, layers=2, heads=4,
                                        mlp_ratio=2.5),
                    projector=ProjectorConfig(input_dim=48, n_embed=d), tile_tag="2D", global_view_pos="head",
                    candidate_resolutions=[[28, 28], [28, 56], [56, 28], [56, 56]], name="toy")
    cfg.validate()
    return cfg


def random_model(cfg: VL2Config, seed: int = 0, std: float = 0.08) -> DeepseekVL2Model:
    """A model with every parameter drawn from a seeded normal (norm weights around 1)."""
    gen = torch.Generator().manual_seed(seed)
    model = DeepseekVL2Model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * std
            is_norm = "norm" in name and p.dim() == 1 and not name.endswith("bias")
            p.copy_(1.0 + noise if is_norm else noise * (4.0 if name.endswith("gate.weight") else 1.0))
    return model.eval().requires_grad_(False)


def sparse_config_dict(cfg: VL2Config) -> dict[str, Any]:
    """config.json as the releases write it: only fields that differ from the official defaults."""
    full = cfg.to_dict()
    defaults = VL2Config().to_dict()
    out: dict[str, Any] = {"model_type": "deepseek_vl_v2", "architectures": ["DeepseekVLV2ForCausalLM"],
                           "tile_tag": cfg.tile_tag, "global_view_pos": cfg.global_view_pos,
                           "candidate_resolutions": cfg.candidate_resolutions}
    for section in ("language_config", "vision_config", "projector_config"):
        out[section] = {k: v for k, v in full[section].items() if k == "model_type" or defaults[section][k] != v}
    return out


def write_checkpoint(path: Path, model: DeepseekVL2Model, shards: int = 1, dtype: torch.dtype = torch.float32,
                     with_attn_pool: bool = True) -> Path:
    """Write ``model`` as an official-layout checkpoint; ``shards > 1`` writes an index + shard files."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(sparse_config_dict(model.cfg), indent=2))
    sd = {k: v.to(dtype) for k, v in to_official_state_dict(model).items()}
    if with_attn_pool:  # the unused MAP head the releases carry
        w = model.cfg.vision.width
        sd["vision.attn_pool.latent"] = torch.zeros(1, 1, w, dtype=dtype)
        sd["vision.attn_pool.q.weight"] = torch.zeros(w, w, dtype=dtype)
    keys = sorted(sd)
    if shards == 1:
        save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[i::shards]}
        save_file(part, str(path / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in sd.values())},
             "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return path


def toy_batch(cfg: VL2Config, lengths: list[int], crops: list[list[tuple[int, int]]], seed: int = 0,
              pad_id: int = 2, image_id: int = 5) -> dict[str, torch.Tensor]:
    """A left-padded processor-shaped batch: per sample ``lengths[b]`` text tokens and the images ``crops[b]``
    (each (width_tiles, height_tiles)); image slots placed after the first text token (BOS)."""
    gen = torch.Generator().manual_seed(seed)
    size = cfg.vision.image_size
    seqs, masks, tiles = [], [], []
    for n_text, sample in zip(lengths, crops):
        n_img = sum(cfg.image_tokens(w, h) for w, h in sample)
        text = torch.randint(10, cfg.language.vocab_size, (n_text,), generator=gen)
        text[0] = cfg.language.bos_token_id
        ids = torch.cat([text[:1], torch.full((n_img,), image_id), text[1:]])
        seqs.append(ids)
        masks.append(torch.cat([torch.zeros(1), torch.ones(n_img), torch.zeros(n_text - 1)]).bool())
        n_tiles = sum(1 + w * h for w, h in sample)
        tiles.append(torch.rand(n_tiles, 3, size, size, generator=gen) * 2 - 1)
    t = max(len(s) for s in seqs)
    b = len(seqs)
    max_tiles = max(1, max(x.shape[0] for x in tiles))
    max_images = max(1, max(len(s) for s in crops))
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(b, t, dtype=torch.bool)
    seq_mask = torch.zeros(b, t, dtype=torch.bool)
    images = torch.zeros(b, max_tiles, 3, size, size)
    spatial = torch.zeros(b, max_images, 2, dtype=torch.long)
    for i, (ids, m, tl, sample) in enumerate(zip(seqs, masks, tiles, crops)):
        input_ids[i, t - len(ids):] = ids
        attention_mask[i, t - len(ids):] = True
        seq_mask[i, t - len(ids):] = m
        images[i, :tl.shape[0]] = tl
        for j, (w, h) in enumerate(sample):
            spatial[i, j] = torch.tensor([w, h])
    return dict(input_ids=input_ids, attention_mask=attention_mask, images=images, images_seq_mask=seq_mask,
                images_spatial_crop=spatial)


class ToyProcessor:
    """A stand-in for ``VL2Processor`` over toy configs: characters as tokens, each image as a (1, 1) crop
    (global view + one local view of the image resized to the tile size). Same output fields and padding."""

    def __init__(self, cfg: VL2Config, pad_id: int = 2, image_id: int = 5) -> None:
        self.cfg, self.pad_id, self.image_id = cfg, pad_id, image_id

    def __call__(self, prompts: list[str], images: list[list[Any]], apply_template: bool = True,
                 exact: bool = True) -> Any:
        from types import SimpleNamespace

        import numpy as np

        size, vocab = self.cfg.vision.image_size, self.cfg.language.vocab_size
        n_img = self.cfg.image_tokens(1, 1)
        rows = []
        for prompt, imgs in zip(prompts, images):
            text = f"User: {prompt}\n\nAssistant:" if apply_template else prompt
            pieces = text.split("<image>")
            if len(pieces) - 1 != len(imgs):
                raise ValueError("one <image> per image")
            ids, mask = [self.cfg.language.bos_token_id], [False]
            for i, piece in enumerate(pieces):
                ids += [10 + ord(ch) % (vocab - 10) for ch in piece]
                mask += [False] * len(piece)
                if i < len(imgs):
                    ids += [self.image_id] * n_img
                    mask += [True] * n_img
            tiles = []
            for im in imgs:
                arr = np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float32) / 127.5 - 1.0
                tile = torch.from_numpy(arr).permute(2, 0, 1)  # [3, S, S]
                tiles += [tile, tile]
            rows.append((ids, mask, tiles, len(imgs)))
        t = max(len(r[0]) for r in rows)
        b = len(rows)
        max_tiles = max(1, max(len(r[2]) for r in rows))
        max_images = max(1, max(r[3] for r in rows))
        out = SimpleNamespace(input_ids=torch.full((b, t), self.pad_id, dtype=torch.long),
                              attention_mask=torch.zeros(b, t, dtype=torch.bool),
                              images=torch.zeros(b, max_tiles, 3, size, size),
                              images_seq_mask=torch.zeros(b, t, dtype=torch.bool),
                              images_spatial_crop=torch.zeros(b, max_images, 2, dtype=torch.long))
        for i, (ids, mask, tiles, n) in enumerate(rows):
            out.input_ids[i, t - len(ids):] = torch.tensor(ids)
            out.attention_mask[i, t - len(ids):] = True
            out.images_seq_mask[i, t - len(ids):] = torch.tensor(mask)
            for j, tile in enumerate(tiles):
                out.images[i, j] = tile
            out.images_spatial_crop[i, :n] = 1
        return out


TOKENIZER_DIR = Path(__file__).parent / "data" / "tokenizer"  # the processor helper's small release-layout BPE


def write_release_dir(path: Path, model: DeepseekVL2Model) -> Path:
    """A full release-layout directory: weights + config.json (``write_checkpoint``), processor_config.json
    for the toy tile size, and the test tokenizer files. The model's vocab must cover the tokenizer (>= 368)."""
    import shutil

    write_checkpoint(path, model)
    v = model.cfg.vision
    proc = {"candidate_resolutions": model.cfg.candidate_resolutions, "patch_size": v.patch_size,
            "downsample_ratio": model.cfg.projector.downsample_ratio, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
            "normalize": True, "image_token": "<image>", "pad_token": "<｜▁pad▁｜>", "add_special_token": False,
            "sft_format": "deepseek", "mask_prompt": False, "ignore_id": -100,
            "processor_class": "DeepseekVLV2Processor"}
    (path / "processor_config.json").write_text(json.dumps(proc, indent=2))
    for f in TOKENIZER_DIR.iterdir():
        if f.suffix == ".json":
            shutil.copy(f, path / f.name)
    return path


def scripted_model(cfg: VL2Config, tokenizer: Any, answer: str, after: str = ":", seed: int = 0,
                   ) -> DeepseekVL2Model:
    """A random model that greedily answers ``answer`` then EOS to every prompt ending in ``after`` (every
    templated prompt ends in ``<|Assistant|>:``), whatever its images, and nothing else changed: vision tower,
    projector and attention still run on random weights.

    How: every language layer's output projections (attention ``o_proj``, MLP ``down_proj``, experts ``w2``) are
    zero, so each layer adds nothing to the residual stream and the final hidden state is the RMS-normed embedding
    of the current token; the embeddings of the chain ``after, answer..., EOS`` are one-hot in distinct dimensions
    and ``lm_head`` maps each to its successor. A bigram table, so the chain's tokens must be distinct."""
    model = random_model(cfg, seed)
    chain = tokenizer.encode(after)[-1:] + tokenizer.encode(answer) + [tokenizer.eos_id]
    d = cfg.language.hidden_size
    if len(set(chain)) != len(chain) or len(chain) > d:
        raise ValueError(f"the tokens of {after!r} + {answer!r} + EOS must be distinct and at most {d}: {chain}")
    lang = model.language
    with torch.no_grad():
        for layer in lang.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            if hasattr(layer.mlp, "w2"):
                layer.mlp.w2.zero_()
                if layer.mlp.shared_experts is not None:
                    layer.mlp.shared_experts.down_proj.weight.zero_()
            else:
                layer.mlp.down_proj.weight.zero_()
        lang.model.norm.weight.fill_(1.0)
        lang.lm_head.weight.zero_()
        for k, (a, b) in enumerate(zip(chain, chain[1:])):
            lang.model.embed_tokens.weight[a] = torch.nn.functional.one_hot(torch.tensor(k), d).float()
            lang.lm_head.weight[b, k] = 20.0  # logit 20 * sqrt(d) for the successor, 0 for every other token
    return model
