"""``model dump`` (run_dump with a toy processor; CLI argument handling) and the memory estimate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import safe_open
from tests.model.tiny import ToyProcessor, random_model, tiny_config, write_checkpoint

from model.vl2.config import VL2Config
from model.vl2.dump import DUMP_KEYS, run_dump
from model.vl2.generation import GenerationConfig, generate
from model.vl2.loader import load_model
from model.vl2.memory import estimate_memory, kv_bytes_per_token
from services.cli.model import model_group


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt")
    return write_checkpoint(path, random_model(tiny_config("mla"), seed=21))


def test_run_dump_writes_the_eight_tensors(ckpt: Path, tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(img)
    proc = ToyProcessor(tiny_config("mla"))
    out = tmp_path / "dump.safetensors"
    summary = run_dump(ckpt, "<image>\nfind the cat", [img], 5, "float32", "cpu", out, processor=proc)
    with safe_open(str(out), "pt") as f:
        assert sorted(f.keys()) == sorted(DUMP_KEYS)
        t = {k: f.get_tensor(k) for k in f.keys()}
        assert f.metadata()["checkpoint_digest"] == summary["digest"]
    n = t["input_ids"].shape[1]
    assert t["images"].shape == (1, 2, 3, 28, 28) and t["images_spatial_crop"].tolist() == [[[1, 1]]]
    assert t["images_seq_mask"].sum() == 41 and t["inputs_embeds"].shape == (1, n, 64)
    assert t["logits"].shape == (1, n, 160) and t["logits"].dtype == torch.float32
    assert t["generated_ids"].shape == (1, 5)
    # the dumped greedy ids continue the dumped logits' last argmax, and match a fresh generation
    assert int(t["generated_ids"][0, 0]) == int(t["logits"][0, -1].argmax())
    model, _ = load_model(ckpt, dtype=torch.float32)
    batch = proc(["<image>\nfind the cat"], [[Image.open(img)]])
    assert generate(model, batch, GenerationConfig(max_new_tokens=5, eos_token_id=None)).tokens[0] == \
        t["generated_ids"][0].tolist()


def test_cli_rejects_placeholder_mismatch(ckpt: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(model_group, ["dump", str(ckpt), "--prompt", "no image here", "--out",
                                           str(tmp_path / "x.safetensors"), "--image", str(ckpt / "config.json")])
    assert res.exit_code == 2 and "0 <image> placeholder(s) but 1 --image" in res.output


def test_cli_missing_checkpoint_dir(tmp_path: Path) -> None:
    res = CliRunner().invoke(model_group, ["dump", str(tmp_path / "nope"), "--prompt", "x", "--out", "o"])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_services_cli_does_not_import_torch() -> None:
    code = "import sys, services.cli.model; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_memory_estimate() -> None:
    tiny = estimate_memory("tiny", batch=1, tiles=(2, 2), dtype=torch.bfloat16, new_tokens=32)
    assert tiny.weights == pytest.approx(2 * 3.3553e9, rel=1e-3)  # 3.371 B minus the unused MAP head, bf16
    assert tiny.tokens_per_request == 1023 + 64
    assert tiny.kv_cache == (1023 + 64 + 32) * 12 * 2 * 1280 * 2  # MHA: K and V
    base = VL2Config.from_name("base")
    assert kv_bytes_per_token(base, torch.bfloat16) == 30 * 576 * 2  # MLA: latent + rope key only
    b8 = estimate_memory("tiny", batch=8, tiles=(2, 2), new_tokens=32)
    assert b8.kv_cache == 8 * tiny.kv_cache and b8.activations > tiny.activations
    chunked = estimate_memory("small", batch=4, tiles=(3, 3), prefill_chunk=128)
    assert chunked.activations <= estimate_memory("small", batch=4, tiles=(3, 3)).activations
    assert set(tiny.as_dict()) == {"weights", "kv_cache", "activations", "total", "tokens_per_request"}


def test_cli_dump_end_to_end_with_the_real_processor(tmp_path: Path) -> None:
    """``model dump`` on a release-layout directory: our loader + the processor helper's VL2Processor."""
    processor_mod = pytest.importorskip("model.vl2.processor")
    from tests.model.tiny import TOKENIZER_DIR, write_release_dir

    if not TOKENIZER_DIR.is_dir():
        pytest.skip("the test tokenizer (tests/model/data/tokenizer) is not there")
    cfg = tiny_config("mha", vocab=400)
    ckpt = write_release_dir(tmp_path / "ckpt", random_model(cfg, seed=3))
    img = tmp_path / "wide.png"
    Image.new("RGB", (90, 40), (10, 200, 30)).save(img)
    out = tmp_path / "dump.safetensors"
    res = CliRunner().invoke(model_group, ["dump", str(ckpt), "--prompt", "<image>\nFind all the red boxes.",
                                           "--image", str(img), "--max-new-tokens", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    with safe_open(str(out), "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
    nw, nh = processor_mod.select_best_resolution((90, 40), cfg.candidate_resolutions)
    nw, nh = nw // 28, nh // 28
    assert t["images_spatial_crop"].tolist() == [[[nw, nh]]]
    assert t["images"].shape == (1, 1 + nw * nh, 3, 28, 28)
    assert int(t["images_seq_mask"].sum()) == cfg.image_tokens(nw, nh)
    assert t["generated_ids"].shape == (1, 4) and t["logits"].shape[:2] == t["input_ids"].shape
    assert int(t["input_ids"][0, 0]) == 0  # BOS


DATA = Path(__file__).parent / "data"


@pytest.mark.parity
@pytest.mark.skipif(not (DATA / "reference" / "tiny" / "one_image.safetensors").is_file(),
                    reason="no recorded reference values yet")
def test_cli_dump_reproduces_the_official_recording(tmp_path: Path) -> None:
    """Image file + prompt -> processor -> our model, through the CLI, gives the official greedy ids and logits."""
    ref_file = DATA / "reference" / "tiny" / "one_image.safetensors"
    with safe_open(str(ref_file), "pt") as f:
        ref = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    out = tmp_path / "dump.safetensors"
    res = CliRunner().invoke(model_group, ["dump", str(DATA / "checkpoints" / "tiny"), "--prompt", meta["prompt"],
                                           "--image", str(DATA / "reference" / "images" / "a.png"),
                                           "--max-new-tokens", "8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    with safe_open(str(out), "pt") as f:
        got = {k: f.get_tensor(k) for k in f.keys()}
    assert got["generated_ids"].tolist() == ref["generated_ids"].tolist()
    pos = ref["logits_positions"].long()
    assert (got["logits"][0, pos] - ref["logits"][0]).abs().max() <= 1e-3
