"""DeepSeek-VL2 configuration: dataclasses, named presets, and the official sparse ``config.json`` reader.

The released ``config.json`` files are sparse; every field they leave out falls back to the defaults of the
*official* classes (``DeepseekV2Config``, ``VisionEncoderConfig``, ``MlpProjectorConfig``, ``DeepseekVLV2Config``),
which are the dataclass defaults below. They differ from transformers' own ``deepseek_v2`` defaults.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file is missing, unreadable or inconsistent. The message names the file and the field."""


@dataclass
class LanguageConfig:
    """DeepSeek-V2 language model; defaults = official ``DeepseekV2Config.__init__`` defaults."""

    vocab_size: int = 102400
    hidden_size: int = 4096
    intermediate_size: int = 11008
    moe_intermediate_size: int = 1407
    num_hidden_layers: int = 30
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    n_shared_experts: int | None = None
    n_routed_experts: int | None = None
    routed_scaling_factor: float = 1.0
    kv_lora_rank: int | None = 512
    q_lora_rank: int | None = 1536
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    qk_nope_head_dim: int = 128
    topk_method: str = "gready"  # (sic) the official default; releases write "greedy" or "noaux_tc"
    n_group: int | None = None
    topk_group: int | None = None
    num_experts_per_tok: int | None = None
    moe_layer_freq: int = 1
    first_k_dense_replace: int = 0
    norm_topk_prob: bool = False
    scoring_func: str = "softmax"
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    bos_token_id: int = 100000
    eos_token_id: int = 100001
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False
    use_mla: bool = True

    @property
    def head_dim(self) -> int:
        """Per-head width of the plain MHA path (tiny)."""
        return self.hidden_size // self.num_attention_heads

    def is_moe_layer(self, layer_idx: int) -> bool:
        return (self.n_routed_experts is not None and layer_idx >= self.first_k_dense_replace
                and layer_idx % self.moe_layer_freq == 0)


@dataclass
class VisionConfig:
    """SigLIP ViT; defaults = official ``VisionEncoderConfig`` defaults."""

    model_name: str = "siglip_large_patch16_384"
    image_size: int = 384
    patch_size: int = 16
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    global_pool: str = "map"
    ignore_head: bool = True
    class_token: bool = False

    @property
    def grid(self) -> int:
        """Patches per side: the stride-``patch_size`` conv drops the remainder (384 // 14 = 27)."""
        return self.image_size // self.patch_size

    @property
    def mlp_dim(self) -> int:
        return int(self.width * self.mlp_ratio)


@dataclass
class ProjectorConfig:
    """Vision -> language projector; defaults = official ``MlpProjectorConfig`` defaults."""

    projector_type: str = "downsample_mlp_gelu"
    input_dim: int = 1152
    n_embed: int = 2048
    depth: int = 2
    mlp_ratio: int = 1
    downsample_ratio: int = 2
    token_pooling: bool = False


_SIGLIP_SO400M = dict(model_name="siglip_so400m_patch14_384", layers=27, width=1152, patch_size=14, mlp_ratio=3.7362)

_CANDIDATES = [[384, 384], [384, 768], [768, 384], [384, 1152], [1152, 384], [384, 1536], [1536, 384], [768, 768],
               [384, 1920], [1920, 384], [384, 2304], [2304, 384], [768, 1152], [1152, 768], [384, 2688],
               [2688, 384], [384, 3072], [3072, 384], [768, 1536], [1536, 768], [384, 3456], [3456, 384],
               [1152, 1152]]

# The language fields each release writes (reference doc section 1.1); the rest are official defaults.
_RELEASE_LANGUAGE: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=1280, num_hidden_layers=12, num_attention_heads=10, num_key_value_heads=10,
                 use_mla=False, q_lora_rank=None, kv_lora_rank=None, qk_rope_head_dim=0, qk_nope_head_dim=0,
                 v_head_dim=0, intermediate_size=6848, moe_intermediate_size=896, n_routed_experts=64,
                 n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1, topk_method="greedy",
                 n_group=1, topk_group=1, vocab_size=129280, max_position_embeddings=4096, bos_token_id=0,
                 eos_token_id=1),
    "small": dict(hidden_size=2048, num_hidden_layers=27, num_attention_heads=16, num_key_value_heads=16,
                  q_lora_rank=None, intermediate_size=10944, moe_intermediate_size=1408, n_routed_experts=64,
                  n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1, topk_method="greedy",
                  n_group=1, topk_group=1, vocab_size=129280, max_position_embeddings=4096, bos_token_id=0,
                  eos_token_id=1),
    "base": dict(hidden_size=2560, q_lora_rank=None, intermediate_size=12288, moe_intermediate_size=1536,
                 n_routed_experts=72, n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1,
                 topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.0,
                 n_group=1, topk_group=1, vocab_size=129280, max_position_embeddings=4096, bos_token_id=0,
                 eos_token_id=1),
}


@dataclass
class VL2Config:
    """The whole model. ``tile_tag`` default is the official ``__init__`` default (which no release uses)."""

    language: LanguageConfig = field(default_factory=LanguageConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    tile_tag: str = "tile_tag"
    global_view_pos: str = "head"
    candidate_resolutions: list[list[int]] = field(default_factory=lambda: [[384, 384]])
    name: str = "custom"

    @classmethod
    def from_name(cls, name: str) -> "VL2Config":
        """The real release architectures: "tiny", "small", "base" (= deepseek-vl2)."""
        if name not in _RELEASE_LANGUAGE:
            raise ConfigError(f"unknown DeepSeek-VL2 variant {name!r}; expected one of {sorted(_RELEASE_LANGUAGE)}")
        lang = LanguageConfig(**_RELEASE_LANGUAGE[name])
        cfg = cls(language=lang, vision=VisionConfig(**_SIGLIP_SO400M),
                  projector=ProjectorConfig(n_embed=lang.hidden_size), tile_tag="2D", global_view_pos="head",
                  candidate_resolutions=[list(r) for r in _CANDIDATES], name=name)
        cfg.validate()
        return cfg

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "VL2Config":
        """Read ``<path>/config.json`` (or a config.json path) as the official classes would."""
        p = Path(path)
        file = p / "config.json" if p.is_dir() else p
        if not file.is_file():
            raise ConfigError(f"{file}: config file not found")
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{file}: not valid JSON ({e})") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: top level must be a JSON object")
        return cls.from_dict(raw, source=str(file))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<dict>") -> "VL2Config":
        if raw.get("model_type") != "deepseek_vl_v2":
            raise ConfigError(f"{source}: model_type must be 'deepseek_vl_v2', got {raw.get('model_type')!r}")
        lang = _build(LanguageConfig, raw.get("language_config", {}), source, "language_config")
        vis = _build(VisionConfig, raw.get("vision_config", {}), source, "vision_config")
        proj = _build(ProjectorConfig, raw.get("projector_config", {}), source, "projector_config")
        cfg = cls(language=lang, vision=vis, projector=proj, tile_tag=raw.get("tile_tag", "tile_tag"),
                  global_view_pos=raw.get("global_view_pos", "head"),
                  candidate_resolutions=[list(r) for r in raw.get("candidate_resolutions", [[384, 384]])],
                  name=_guess_name(lang))
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        """Check that the parts fit together; raise ``ConfigError`` naming the field."""
        L, V, P = self.language, self.vision, self.projector

        def bad(fieldname: str, msg: str) -> ConfigError:
            return ConfigError(f"{source}: {fieldname}: {msg}")

        if self.tile_tag != "2D":
            raise bad("tile_tag", f"only '2D' is supported (every release uses it), got {self.tile_tag!r}")
        if self.global_view_pos not in ("head", "tail"):
            raise bad("global_view_pos", f"must be 'head' or 'tail', got {self.global_view_pos!r}")
        if P.projector_type != "downsample_mlp_gelu" or P.token_pooling:
            raise bad("projector_config.projector_type", f"only downsample_mlp_gelu without token pooling is "
                      f"supported, got {P.projector_type!r} (token_pooling={P.token_pooling})")
        if P.input_dim != V.width:
            raise bad("projector_config.input_dim", f"{P.input_dim} != vision_config.width {V.width}")
        if P.n_embed != L.hidden_size:
            raise bad("projector_config.n_embed", f"{P.n_embed} != language_config.hidden_size {L.hidden_size}")
        if V.patch_size <= 0 or V.patch_size > V.image_size:
            raise bad("vision_config.patch_size", f"{V.patch_size} with image_size {V.image_size}")
        if V.width % V.heads:
            raise bad("vision_config.heads", f"{V.heads} does not divide width {V.width}")
        if L.hidden_size % L.num_attention_heads:
            raise bad("language_config.num_attention_heads",
                      f"{L.num_attention_heads} does not divide hidden_size {L.hidden_size}")
        if L.num_key_value_heads != L.num_attention_heads:
            raise bad("language_config.num_key_value_heads", "grouped-query attention is not used by DeepSeek-V2")
        if L.use_mla and (L.kv_lora_rank is None or L.qk_rope_head_dim <= 0 or L.qk_rope_head_dim % 2
                          or L.v_head_dim <= 0):
            raise bad("language_config.kv_lora_rank", "MLA needs kv_lora_rank and an even qk_rope_head_dim > 0")
        if not L.use_mla and L.head_dim % 2:
            raise bad("language_config.hidden_size", "MHA head_dim must be even for RoPE")
        if L.n_routed_experts is not None:
            k = L.num_experts_per_tok
            if k is None or not 0 < k <= L.n_routed_experts:
                raise bad("language_config.num_experts_per_tok", f"{k} with {L.n_routed_experts} experts")
            if L.topk_method not in ("greedy", "noaux_tc"):
                raise bad("language_config.topk_method", f"{L.topk_method!r} is not supported "
                          "(supported: 'greedy', 'noaux_tc')")
            if L.scoring_func not in ("softmax", "sigmoid"):
                raise bad("language_config.scoring_func", f"{L.scoring_func!r}")
            if L.topk_method == "noaux_tc" and (L.n_group or 1) != 1:
                raise bad("language_config.n_group", "group-limited routing is not implemented (n_group must be 1)")
        if L.rope_scaling is not None:
            raise bad("language_config.rope_scaling", "RoPE scaling is not used by any release; not supported")
        if L.tie_word_embeddings:
            raise bad("language_config.tie_word_embeddings", "tied embeddings are not used by any release")
        if L.hidden_act != "silu":
            raise bad("language_config.hidden_act", f"only silu is supported, got {L.hidden_act!r}")

    def to_dict(self) -> dict[str, Any]:
        """The official-style config dict (fully written out)."""
        return {"model_type": "deepseek_vl_v2", "tile_tag": self.tile_tag, "global_view_pos": self.global_view_pos,
                "candidate_resolutions": self.candidate_resolutions,
                "language_config": {"model_type": "deepseek_v2", **dataclasses.asdict(self.language)},
                "vision_config": {"model_type": "vision", **dataclasses.asdict(self.vision)},
                "projector_config": {"model_type": "mlp_projector", **dataclasses.asdict(self.projector)}}

    # ---- cost ----------------------------------------------------------------------------------------------
    def image_tokens(self, width_tiles: int = 1, height_tiles: int = 1) -> int:
        """Sequence positions one image takes (global + separator + local grid, with newline columns)."""
        g = -(-self.vision.grid // self.projector.downsample_ratio)  # ceil: 27 -> 14
        return g * (g + 1) + 1 + (height_tiles * g) * (width_tiles * g + 1)


def _build(cls: type, raw: Any, source: str, section: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {section} must be an object")
    names = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in raw.items() if k in names}
    for f in fields(cls):
        if f.name in kwargs and kwargs[f.name] is not None:
            kwargs[f.name] = _coerce(kwargs[f.name], f.type, source, f"{section}.{f.name}")
    return cls(**kwargs)


def _coerce(value: Any, type_name: Any, source: str, where: str) -> Any:
    t = str(type_name)
    if t.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {where}: expected an integer, got {value!r}")
    elif t.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {where}: expected a number, got {value!r}")
        return float(value)
    elif t.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {where}: expected true/false, got {value!r}")
    elif t.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {where}: expected a string, got {value!r}")
    return value


def _guess_name(lang: LanguageConfig) -> str:
    for name, fields_ in _RELEASE_LANGUAGE.items():
        if all(getattr(lang, k) == v for k, v in fields_.items()):
            return name
    return "custom"
