"""Checkpoint loader: single file and shards, strictness, digest, dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.model.tiny import random_model, tiny_config, write_checkpoint

from model.vl2.loader import CheckpointError, load_model


@pytest.fixture(scope="module")
def toy() -> torch.nn.Module:
    return random_model(tiny_config("mla", "sigmoid"), seed=1)


@pytest.mark.parametrize("shards", [1, 3])
def test_roundtrip_exact(tmp_path: Path, toy: torch.nn.Module, shards: int) -> None:
    write_checkpoint(tmp_path, toy, shards=shards)
    model, info = load_model(tmp_path, dtype=torch.float32)
    for (name, p), (_, q) in zip(toy.state_dict().items(), model.state_dict().items()):
        assert torch.equal(p, q), name
    assert len(info.files) == shards and info.digest is not None and info.digest.startswith("sha256:")
    assert sorted(info.skipped) == ["vision.attn_pool.latent", "vision.attn_pool.q.weight"]
    assert model.language.model.layers[1].mlp.gate.e_score_correction_bias.shape == (8,)


def test_digest_changes_with_weights(tmp_path: Path, toy: torch.nn.Module) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_checkpoint(a, toy)
    write_checkpoint(b, random_model(toy.cfg, seed=2))
    da, db = load_model(a, dtype=torch.float32)[1].digest, load_model(b, dtype=torch.float32)[1].digest
    assert da != db and da == load_model(a, dtype=torch.float32)[1].digest


def test_dtype_option(tmp_path: Path, toy: torch.nn.Module) -> None:
    write_checkpoint(tmp_path, toy)
    model, info = load_model(tmp_path, dtype=torch.bfloat16, digest=False)
    assert info.digest is None
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def _edit(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    f = path / "model.safetensors"
    sd = load_file(str(f))
    fn(sd)
    save_file(sd, str(f))


def test_missing_key(tmp_path: Path, toy: torch.nn.Module) -> None:
    write_checkpoint(tmp_path, toy)
    _edit(tmp_path, lambda sd: sd.pop("language.model.layers.2.mlp.experts.5.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'language\.model\.layers\.2\.mlp\.experts\.5\.up_proj"):
        load_model(tmp_path)


def test_unexpected_key(tmp_path: Path, toy: torch.nn.Module) -> None:
    write_checkpoint(tmp_path, toy)
    _edit(tmp_path, lambda sd: sd.__setitem__("language.model.layers.0.mlp.extra", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unexpected tensor 'language\.model\.layers\.0"):
        load_model(tmp_path)


def test_wrong_shape(tmp_path: Path, toy: torch.nn.Module) -> None:
    write_checkpoint(tmp_path, toy)
    _edit(tmp_path, lambda sd: sd.__setitem__("image_newline", torch.zeros(63)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'image_newline' has shape \(63,\), "
                                              r"expected \(64,\)"):
        load_model(tmp_path)


def test_missing_shard_named(tmp_path: Path, toy: torch.nn.Module) -> None:
    write_checkpoint(tmp_path, toy, shards=2)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"index\.json: lists shard 'model-00002-of-00002\.safetensors'"):
        load_model(tmp_path)


def test_bad_index(tmp_path: Path, toy: torch.nn.Module) -> None:
    write_checkpoint(tmp_path, toy, shards=2)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"nope": 1}))
    with pytest.raises(CheckpointError, match="not a valid safetensors index"):
        load_model(tmp_path)


def test_no_weights_and_no_dir(tmp_path: Path, toy: torch.nn.Module) -> None:
    write_checkpoint(tmp_path, toy)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors and no model.safetensors.index.json"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_model(tmp_path / "absent")


def test_corrupt_file(tmp_path: Path, toy: torch.nn.Module) -> None:
    write_checkpoint(tmp_path, toy)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read safetensors file"):
        load_model(tmp_path)
