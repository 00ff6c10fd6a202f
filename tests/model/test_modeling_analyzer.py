"""VL2 analyzers: plain AnalyzerUnavailable messages where they cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.analyzers import AnalyzerUnavailable
from model.vl2.analyzer import build_vl2_analyzer


def test_no_checkpoint_configured() -> None:
    with pytest.raises(AnalyzerUnavailable, match="vl2-ground: no DeepSeek-VL2 checkpoint is configured"):
        build_vl2_analyzer("vl2-ground", {"phrases": ["pallet"], "checkpoint": None, "device": "cpu"})


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(AnalyzerUnavailable, match="checkpoint directory .*absent does not exist"):
        build_vl2_analyzer("vl2-ocr", {"checkpoint": str(tmp_path / "absent"), "device": "cpu"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda(tmp_path: Path) -> None:
    with pytest.raises(AnalyzerUnavailable, match="no CUDA device is available"):
        build_vl2_analyzer("vl2-ocr", {"checkpoint": str(tmp_path), "device": "cuda"})


def test_unusable_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(AnalyzerUnavailable, match="vl2-ocr: cannot load DeepSeek-VL2 from"):
        build_vl2_analyzer("vl2-ocr", {"checkpoint": str(tmp_path), "device": "cpu", "dtype": "float32"})


def test_unknown_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no option.s. temperature"):
        build_vl2_analyzer("vl2-ocr", {"checkpoint": str(tmp_path), "temperature": 0.5})


def test_grounding_needs_phrases(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs at least one phrase"):
        build_vl2_analyzer("vl2-ground", {"checkpoint": str(tmp_path), "device": "cpu"})


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("model.vl2.processor")
    pytest.importorskip("model.vl2.grounding")
    from tests.model.tiny import TOKENIZER_DIR, random_model, tiny_config, write_release_dir

    if not TOKENIZER_DIR.is_dir():
        pytest.skip("the test tokenizer (tests/model/data/tokenizer) is not there")
    return write_release_dir(tmp_path_factory.mktemp("rel"), random_model(tiny_config("mla", vocab=400), seed=2))


def test_grounding_analyzer_end_to_end(release_dir: Path) -> None:
    from PIL import Image

    an = build_vl2_analyzer("vl2-ground", {"checkpoint": str(release_dir), "device": "cpu", "dtype": "float32",
                                           "phrases": ["red box", "person"], "max_new_tokens": 6,
                                           "images_per_batch": 2})
    images = [Image.new("RGB", (60, 40), (200, 0, 0)), Image.new("RGB", (30, 90), (0, 0, 200)),
              Image.new("RGB", (50, 50), (9, 9, 9))]
    results = an.analyze(images)
    assert len(results) == 3
    for img, res in zip(images, results):
        assert res.detections.kind == "objects" and res.detections.image_size == img.size
        assert res.lineage.analyzer == "vl2-ground" and res.lineage.checkpoint_digest.startswith("sha256:")
        assert "Find all the <|ref|>red box<|/ref|>." in (res.lineage.prompt or "")
    # the same weights are shared with the OCR analyzer of the same checkpoint
    ocr = build_vl2_analyzer("vl2-ocr", {"checkpoint": str(release_dir), "device": "cpu", "dtype": "float32",
                                         "max_new_tokens": 4})
    assert ocr.model is an.model
    assert ocr.analyze(images[:1])[0].detections.kind == "text_lines"


def test_grounding_answer_to_pixel_boxes(release_dir: Path) -> None:
    an = build_vl2_analyzer("vl2-ground", {"checkpoint": str(release_dir), "device": "cpu", "dtype": "float32",
                                           "phrases": ["red box"]})
    tok = an.processor.tokenizer
    answer = "<|ref|>red box<|/ref|><|det|>[[0, 0, 999, 499], [100, 200, 300, 400]]<|/det|>"
    ids = tok.encode(answer)
    assert tok.decode(ids) == answer
    det = an._grounding((1000, 500), [ids], [[0.5] * len(ids)])
    assert det.labels == ("red box", "red box")
    assert det.xyxy[0].tolist() == [0.0, 0.0, 1000.0, 499 / 999 * 500]
    assert det.scores is not None and det.scores.tolist() == [0.5, 0.5]
    ocr = build_vl2_analyzer("vl2-ocr", {"checkpoint": str(release_dir), "device": "cpu", "dtype": "float32"})
    lines = ocr._ocr((200, 100), tok.encode("LOT 42\nEXP 2026"), [0.8] * len(tok.encode("LOT 42\nEXP 2026")))
    assert lines.kind == "text_lines" and lines.data["text"] == ("LOT 42", "EXP 2026")
