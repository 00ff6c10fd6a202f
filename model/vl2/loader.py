"""Load an official DeepSeek-VL2 checkpoint directory (config.json + safetensors) strictly, locally.

Single ``model.safetensors`` or HF-style shards listed in ``model.safetensors.index.json``. Every model tensor
must be present with the right shape and no unknown key may appear (the unused ``vision.attn_pool.*`` head is
skipped). Routed experts ``...mlp.experts.E.{gate,up,down}_proj.weight`` land in slices of the stacked
``mlp.w13`` / ``mlp.w2``. No hub access, no remote code.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from model.vl2.config import VL2Config
from model.vl2.language import MoE
from model.vl2.modeling import DeepseekVL2Model

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SKIPPED_PREFIXES = ("vision.attn_pool.",)
_EXPERT = re.compile(r"^(.*\.mlp)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


class CheckpointError(ValueError):
    """A checkpoint file or tensor is missing, unexpected or malformed; the message names the file and key."""


@dataclass
class CheckpointInfo:
    path: Path
    config: VL2Config
    files: list[Path]
    digest: str | None  # "sha256:<hex>" over the weight files (name + bytes, in name order)
    skipped: list[str] = field(default_factory=list)


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, from the index if there is one."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            names = sorted(set(data["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from e
        files = [path / n for n in names]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{index}: lists shard {f.name!r}, which does not exist in {path}")
        return files
    single = path / SINGLE_FILE
    if single.is_file():
        return [single]
    raise CheckpointError(f"{path}: no {SINGLE_FILE} and no {INDEX_FILE}")


def checkpoint_digest(files: list[Path], chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.name):
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return "sha256:" + h.hexdigest()


def official_targets(model: DeepseekVL2Model) -> dict[str, torch.Tensor]:
    """Official key -> the tensor (parameter or slice of a stacked expert parameter) it fills."""
    targets: dict[str, torch.Tensor] = {}
    moe_prefixes = {name + ".": mod for name, mod in model.named_modules() if isinstance(mod, MoE)}
    for name, p in model.named_parameters():
        prefix = name.rsplit(".", 1)[0] + "."
        if prefix in moe_prefixes and name.endswith((".w13", ".w2")):
            mod = moe_prefixes[prefix]
            inter = mod.w2.shape[2]
            for e in range(p.shape[0]):
                base = f"{prefix}experts.{e}."
                if name.endswith(".w13"):
                    targets[base + "gate_proj.weight"] = p.data[e, :inter]
                    targets[base + "up_proj.weight"] = p.data[e, inter:]
                else:
                    targets[base + "down_proj.weight"] = p.data[e]
        else:
            targets[name] = p.data
    return targets


def to_official_state_dict(model: DeepseekVL2Model) -> dict[str, torch.Tensor]:
    """The model's weights under official key names (contiguous copies), e.g. to write a checkpoint."""
    return {k: v.detach().clone().contiguous() for k, v in official_targets(model).items()}


def load_model(path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
               digest: bool = True) -> tuple[DeepseekVL2Model, CheckpointInfo]:
    """Build the model from ``config.json`` and fill it from the safetensors files; eval mode, no grad."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    cfg = VL2Config.from_checkpoint(path)
    files = weight_files(path)
    with torch.device("meta"):
        model = DeepseekVL2Model(cfg)
    model = model.to(dtype).to_empty(device=device)
    targets = official_targets(model)
    seen: set[str] = set()
    skipped: list[str] = []
    with torch.no_grad():
        for f in files:
            try:
                handle = safe_open(str(f), framework="pt", device="cpu")
            except Exception as e:  # safetensors raises its own error types
                raise CheckpointError(f"{f}: cannot read safetensors file ({e})") from e
            with handle:
                for key in handle.keys():
                    if key.startswith(SKIPPED_PREFIXES):
                        skipped.append(key)
                        continue
                    if key not in targets:
                        raise CheckpointError(f"{f}: unexpected tensor {key!r}")
                    if key in seen:
                        raise CheckpointError(f"{f}: tensor {key!r} appears in more than one file")
                    t = handle.get_tensor(key)
                    dst = targets[key]
                    if tuple(t.shape) != tuple(dst.shape):
                        raise CheckpointError(f"{f}: tensor {key!r} has shape {tuple(t.shape)}, "
                                              f"expected {tuple(dst.shape)}")
                    dst.copy_(t)
                    seen.add(key)
    missing = sorted(set(targets) - seen)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{path}: missing tensor {missing[0]!r}{more} in {', '.join(f.name for f in files)}")
    model.eval().requires_grad_(False)
    info = CheckpointInfo(path=path, config=cfg, files=files, digest=checkpoint_digest(files) if digest else None,
                          skipped=skipped)
    return model, info
