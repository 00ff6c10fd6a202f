"""RapidOCR analyzer on generated labels (the committed samples are read in test_samples)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from model.engines import ocr as ocr_mod
from model.engines.ocr import OcrAnalyzer
from tests.images import draw_label


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


@pytest.fixture(scope="module")
def analyzer() -> OcrAnalyzer:
    return OcrAnalyzer()


def test_reads_the_sku_line_with_a_box_around_it(analyzer: OcrAnalyzer) -> None:
    image, _ = draw_label("WH-10427")
    (res,) = analyzer.analyze([image])
    rows = res.detections.to_rows()
    hits = [r for r in rows if "WH-10427" in _norm(r["text"])]
    assert len(hits) == 1, rows
    r = hits[0]
    # the SKU line is drawn at (30, 70) in 56 px type, left of the barcode, above y=170
    assert r["x1"] < 40 and r["y1"] < 85 and r["y2"] < 170 and r["x2"] > 300
    assert 0.5 <= r["score"] <= 1.0
    w, h = image.size
    assert all(0 <= x["x1"] <= x["x2"] <= w and 0 <= x["y1"] <= x["y2"] <= h for x in rows)


def test_one_result_per_image_and_lineage(analyzer: OcrAnalyzer) -> None:
    blank = Image.new("RGB", (320, 200), "white")
    label, _ = draw_label("WH-55501", code128=False, qr=False)
    results = analyzer.analyze([blank, label])
    assert len(results) == 2
    assert len(results[0].detections) == 0 and results[0].detections.kind == "text_lines"
    assert any("WH-55501" in t for t in results[1].detections.data["text"])
    lin = results[1].lineage
    assert (lin.analyzer, lin.engine) == ("ocr", "rapidocr") and lin.version.startswith("3.")


def test_engine_is_built_once_and_from_the_wheel_models(analyzer: OcrAnalyzer) -> None:
    analyzer.analyze([Image.new("RGB", (64, 64), "white")])
    engine = ocr_mod.get_engine(analyzer.threads)
    assert ocr_mod.get_engine(analyzer.threads) is engine
    model_dir = ocr_mod._model_dir()
    for task, fname in ocr_mod.MODEL_FILES.items():
        assert str(engine.cfg[task].model_path) == str(model_dir / fname)


def test_ocr_is_quiet(analyzer: OcrAnalyzer, capfd: pytest.CaptureFixture[str]) -> None:
    image, _ = draw_label("WH-77777", code128=False)
    analyzer.analyze([image])
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# ---- the committed samples ----------------------------------------------------------------------------------
SAMPLES = Path(__file__).resolve().parents[2] / "samples"
EXPECTED = json.loads((SAMPLES / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_skus_are_read(analyzer: OcrAnalyzer, name: str) -> None:
    with Image.open(SAMPLES / name) as src:
        image = src.convert("RGB")
    (res,) = analyzer.analyze([image])
    det = res.detections
    w, h = image.size
    assert det.image_size == (w, h)
    assert ((det.xyxy[:, [0, 2]] <= w) & (det.xyxy[:, [1, 3]] <= h)).all() and (det.xyxy >= 0).all()
    texts = [_norm(t) for t in det.data.get("text", ())]
    for sku in EXPECTED[name]["skus"]:
        lines = [i for i, t in enumerate(texts) if sku in t.replace(" ", "")]
        assert lines, (sku, texts)
        x1, y1, x2, y2 = det.xyxy[lines[0]]
        assert x2 - x1 > 2 * (y2 - y1) > 0  # a line of text, wider than tall
    if not EXPECTED[name]["skus"]:
        assert not any("WH-" in t for t in texts)
