"""The VL2 analyzers through the same ``vlwatch eval`` code, with a tiny random checkpoint in the official layout on
CPU: the numbers mean nothing, the plumbing is what is tested (analyzers built from settings and the profile, object
and text scores computed, lineage with the checkpoint digest and prompts, reports written, the run stored in the
embedded SQLite database). With real weights the same command gives real figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from services.cli.main import main

PHRASES = ["pallet", "forklift", "person"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.model.tiny import random_model, tiny_config, write_release_dir

    return write_release_dir(tmp_path_factory.mktemp("vl2"), random_model(tiny_config("mla", vocab=400), seed=2))


def test_vl2_profile_scored_by_the_same_code(checkpoint: Path, small_evalset: Path, tmp_path: Path) -> None:
    config = tmp_path / "vlwatch.yaml"
    options = {"max_new_tokens": 8, "images_per_batch": 1}
    config.write_text(yaml.safe_dump({"profiles": {"gpu": {
        "analyzers": ["vl2-ground", "vl2-ocr"], "phrases": PHRASES,
        "options": {"vl2-ground": options, "vl2-ocr": options}}}}))
    env = {"VLWATCH_CONFIG": str(config), "VLWATCH_DATA_DIR": str(tmp_path / "data"),
           "VLWATCH_VL2_CHECKPOINT": str(checkpoint), "VLWATCH_VL2_DEVICE": "cpu", "VLWATCH_VL2_DTYPE": "float32"}
    result = CliRunner().invoke(main, ["eval", str(small_evalset), "--profile", "gpu"], env=env,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "latency vl2-ground" in result.output and "latency vl2-ocr" in result.output
    out = tmp_path / "data" / "eval" / "run-1"
    doc = json.loads((out / "report.json").read_text())
    clean = doc["metrics"]["clean"]
    assert set(clean) >= {"objects", "text_lines", "checks"} and "barcodes" not in clean
    truth = json.loads((small_evalset / "truth.json").read_text())["images"]
    by_label = clean["objects"]["by_label"]
    for label in PHRASES:
        assert by_label[label]["truth"] == sum(o["label"] == label for i in truth for o in i["objects"])
        assert by_label[label]["predicted"] >= 0 and (by_label[label]["recall"] or 0.0) <= 1.0
    assert clean["text_lines"]["lines"] == sum(len(i["text_lines"]) for i in truth)
    assert 0.0 <= clean["text_lines"]["cer"]
    lineage = {x["analyzer"]: x for x in doc["lineage"]}
    assert lineage["vl2-ground"]["checkpoint_digest"].startswith("sha256:")
    assert "<|ref|>forklift<|/ref|>" in lineage["vl2-ground"]["prompt"]
    assert lineage["vl2-ocr"]["settings"]["max_new_tokens"] == 8
    assert set(doc["timings"]["analyzers"]) == {"vl2-ground", "vl2-ocr"}
    page = (out / "report.html").read_text()
    assert "Objects by label" in page and 'data-plot="scores"' in page and "forklift" in page
    assert (tmp_path / "data" / "vlwatch.db").is_file()
