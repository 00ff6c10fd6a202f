"""Barcodes in camera scenes: the scene pass reads what the single zxing-cpp pass misses, and nothing that is not
there. (bench/barcode_scenes.py measures the CPU cost of both on the same set.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from model.engines.barcode import BarcodeAnalyzer
from services.evaluation.metrics import barcode_metrics
from services.evaluation.truth import load_truth

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.fixture(scope="module")
def scenes(evalset: Path) -> list[tuple[list[dict], Image.Image]]:
    truth = load_truth(evalset)
    out = []
    for t in truth.images:
        if t.file_name.startswith("scene"):
            with Image.open(truth.path(t)) as im:
                out.append((t.barcodes, im.convert("RGB")))
    return out


def test_scene_recall_with_no_wrong_values(scenes) -> None:  # noqa: ANN001
    single, both = BarcodeAnalyzer(scene_pass=False), BarcodeAnalyzer()
    before = barcode_metrics((t, single.read(im).to_rows()) for t, im in scenes)
    after = barcode_metrics((t, both.read(im).to_rows()) for t, im in scenes)
    assert after["symbols"] >= 40
    assert after["recall"] >= 0.95 and after["decode_rate"] >= 0.95, after
    assert after["wrong_values"] == 0 and after["precision"] == 1.0
    assert before["recall"] < 0.8  # the single pass misses what the scenes hide: the set is a real test


def test_boxes_of_second_pass_reads_lie_on_their_symbols(scenes) -> None:  # noqa: ANN001
    reader = BarcodeAnalyzer()
    checked = 0
    for truth, im in scenes:
        for row in reader.read(im).to_rows():
            t = next(t for t in truth if (t["format"], t["value"]) == (row["format"], row["value"]))
            cx, cy = (row["x1"] + row["x2"]) / 2, (row["y1"] + row["y2"]) / 2
            x1, y1, x2, y2 = t["box"]
            assert x1 <= cx <= x2 and y1 <= cy <= y2, (row, t)
            checked += 1
    assert checked >= 40


def test_no_reads_where_there_is_no_code() -> None:
    with Image.open(SAMPLES / "aisle_no_labels.jpg") as im:
        aisle = im.convert("RGB")
    noise = Image.effect_noise((800, 600), 60).convert("RGB")
    text = Image.new("RGB", (900, 300), "white")
    from tests.images import font

    from PIL import ImageDraw

    ImageDraw.Draw(text).text((20, 100), "||| IIII lllll 1111 ||||| SKU: WH-11111", fill="black", font=font(48))
    for im in (aisle, noise, text, aisle.rotate(30, expand=True)):
        assert len(BarcodeAnalyzer().read(im)) == 0
