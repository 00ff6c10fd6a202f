"""VL2Config: release presets, the sparse official config.json reader and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.vl2.config import ConfigError, VL2Config

# Fields a release's config.json writes (reference doc 1.1); the rest must come from the official defaults.
BASE_SPARSE = {
    "model_type": "deepseek_vl_v2", "tile_tag": "2D", "global_view_pos": "head",
    "candidate_resolutions": [[384, 384], [384, 768]],
    "vision_config": {"model_name": "siglip_so400m_patch14_384", "model_type": "vision", "layers": 27,
                      "width": 1152, "patch_size": 14, "mlp_ratio": 3.7362},
    "projector_config": {"model_type": "mlp_projector", "n_embed": 2560},
    "language_config": {"model_type": "deepseek_v2", "hidden_size": 2560, "q_lora_rank": None,
                        "intermediate_size": 12288, "moe_intermediate_size": 1536, "n_routed_experts": 72,
                        "n_shared_experts": 2, "num_experts_per_tok": 6, "first_k_dense_replace": 1,
                        "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
                        "routed_scaling_factor": 2.0, "n_group": 1, "topk_group": 1, "vocab_size": 129280,
                        "max_position_embeddings": 4096, "bos_token_id": 0, "eos_token_id": 1,
                        "lm_head": False, "rm_head": False},
}


def write(tmp_path: Path, data: object) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(data))
    return tmp_path


@pytest.mark.parametrize("name,hidden,layers,heads,mla,experts", [
    ("tiny", 1280, 12, 10, False, 64), ("small", 2048, 27, 16, True, 64), ("base", 2560, 30, 32, True, 72)])
def test_presets(name: str, hidden: int, layers: int, heads: int, mla: bool, experts: int) -> None:
    cfg = VL2Config.from_name(name)
    L = cfg.language
    assert (L.hidden_size, L.num_hidden_layers, L.num_attention_heads, L.use_mla, L.n_routed_experts) == \
        (hidden, layers, heads, mla, experts)
    assert cfg.vision.grid == 27 and cfg.vision.mlp_dim == 4304 and cfg.vision.heads == 16
    assert cfg.projector.n_embed == hidden and len(cfg.candidate_resolutions) == 23
    assert [cfg.image_tokens(*c) for c in [(1, 1), (2, 1), (1, 2), (2, 2), (3, 3), (1, 9)]] == \
        [421, 617, 631, 1023, 2017, 2101]
    assert VL2Config.from_dict(cfg.to_dict()) == cfg


def test_sparse_base_config_uses_official_defaults(tmp_path: Path) -> None:
    cfg = VL2Config.from_checkpoint(write(tmp_path, BASE_SPARSE))
    L = cfg.language
    assert L.num_hidden_layers == 30 and L.num_attention_heads == 32 and L.kv_lora_rank == 512  # official defaults
    assert L.qk_rope_head_dim == 64 and L.qk_nope_head_dim == 128 and L.v_head_dim == 128 and L.use_mla
    assert L.q_lora_rank is None and L.rope_theta == 10000.0 and L.rope_scaling is None and L.rms_norm_eps == 1e-6
    assert cfg.vision.image_size == 384 and cfg.vision.heads == 16  # VisionEncoderConfig defaults
    assert cfg.projector.input_dim == 1152 and cfg.projector.depth == 2 and cfg.projector.downsample_ratio == 2
    assert cfg.name == "base" and cfg.language == VL2Config.from_name("base").language


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config.json: config file not found"):
        VL2Config.from_checkpoint(tmp_path)


def test_bad_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json: not valid JSON"):
        VL2Config.from_checkpoint(tmp_path)


def test_wrong_model_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model_type must be 'deepseek_vl_v2', got 'llama'"):
        VL2Config.from_checkpoint(write(tmp_path, {**BASE_SPARSE, "model_type": "llama"}))


@pytest.mark.parametrize("section,key,value,field", [
    ("projector_config", "n_embed", 2048, "projector_config.n_embed"),
    ("vision_config", "width", 1024, "projector_config.input_dim"),
    ("language_config", "num_attention_heads", 33, "language_config.num_attention_heads"),
    ("language_config", "topk_method", "group_limited_greedy", "language_config.topk_method"),
    ("language_config", "hidden_size", "2560", "language_config.hidden_size"),
    ("language_config", "tie_word_embeddings", True, "language_config.tie_word_embeddings"),
    ("language_config", "rope_scaling", {"type": "yarn", "factor": 4}, "language_config.rope_scaling"),
])
def test_inconsistent_fields_name_file_and_field(tmp_path: Path, section: str, key: str, value: object,
                                                 field: str) -> None:
    data = json.loads(json.dumps(BASE_SPARSE))
    data[section][key] = value
    with pytest.raises(ConfigError) as err:
        VL2Config.from_checkpoint(write(tmp_path, data))
    assert "config.json" in str(err.value) and field in str(err.value)


def test_missing_tile_tag_is_the_official_default_and_rejected(tmp_path: Path) -> None:
    data = {k: v for k, v in BASE_SPARSE.items() if k != "tile_tag"}
    with pytest.raises(ConfigError, match="tile_tag"):
        VL2Config.from_checkpoint(write(tmp_path, data))


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="unknown DeepSeek-VL2 variant 'huge'"):
        VL2Config.from_name("huge")
