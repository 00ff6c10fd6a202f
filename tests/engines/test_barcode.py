"""zxing-cpp barcode analyzer: generated labels here; the committed samples in test_samples_barcode."""

from __future__ import annotations

import io

import pytest

from PIL import Image

from model.analyzers import AnalyzerResult
from model.engines.barcode import BarcodeAnalyzer
from tests.images import draw_label, label_png


def _inside(inner: tuple[float, ...], outer: tuple[float, ...], tol: float = 1.0) -> bool:
    return (inner[0] >= outer[0] - tol and inner[1] >= outer[1] - tol
            and inner[2] <= outer[2] + tol and inner[3] <= outer[3] + tol)


def test_label_reads_code128_and_qr_with_boxes_on_the_symbols() -> None:
    image, boxes = draw_label("WH-10427")
    (res,) = BarcodeAnalyzer().analyze([image])
    rows = {r["format"]: r for r in res.detections.to_rows()}
    assert set(rows) == {"Code128", "QRCode"}
    assert rows["Code128"]["value"] == "WH-10427"
    assert rows["QRCode"]["value"] == "https://wh.example/sku/WH-10427"
    for fmt, r in rows.items():
        box = (r["x1"], r["y1"], r["x2"], r["y2"])
        assert _inside(box, boxes[fmt]), (fmt, box, boxes[fmt])
        # the detection covers most of the printed symbol, not a sliver of it
        sym_w, sym_h = boxes[fmt][2] - boxes[fmt][0], boxes[fmt][3] - boxes[fmt][1]
        assert (box[2] - box[0]) > 0.6 * sym_w and (box[3] - box[1]) > 0.6 * sym_h


def test_one_result_per_image_in_order_with_lineage() -> None:
    blank = Image.new("RGB", (200, 100), "white")
    only_qr = Image.open(io.BytesIO(label_png("WH-20001", code128=False))).convert("RGB")
    results = BarcodeAnalyzer().analyze([blank, only_qr, blank])
    assert len(results) == 3 and all(isinstance(r, AnalyzerResult) for r in results)
    assert len(results[0].detections) == 0 and len(results[2].detections) == 0
    assert results[1].detections.labels == ("QRCode",)
    assert results[1].detections.image_size == only_qr.size
    lin = results[1].lineage
    assert (lin.analyzer, lin.engine) == ("barcode", "zxing-cpp")
    assert lin.version[0].isdigit() and lin.settings["formats"] == "all"
    assert BarcodeAnalyzer().analyze([]) == []


def test_rotated_label_is_read_and_box_stays_inside_the_image() -> None:
    image, _ = draw_label("WH-31337")
    rotated = image.rotate(90, expand=True)
    (res,) = BarcodeAnalyzer().analyze([rotated])
    values = sorted(res.detections.data["value"])
    assert values == ["WH-31337", "https://wh.example/sku/WH-31337"]
    w, h = rotated.size
    assert (res.detections.xyxy[:, [0, 2]] <= w).all() and (res.detections.xyxy[:, [1, 3]] <= h).all()
    assert (res.detections.xyxy >= 0).all()


# ---- the committed samples ----------------------------------------------------------------------------------
SAMPLES = __import__("pathlib").Path(__file__).resolve().parents[2] / "samples"


def _expected() -> dict:
    import json

    return json.loads((SAMPLES / "expected.json").read_text())


def _sample_names() -> list[str]:
    return sorted(_expected())


def test_samples_and_expected_agree() -> None:
    exp = _expected()
    assert len(exp) >= 8
    for name, e in exp.items():
        assert (SAMPLES / name).is_file() and set(e) == {"barcodes", "skus"}
    assert sum((SAMPLES / n).stat().st_size for n in exp) < 1_500_000


@pytest.mark.parametrize("name", _sample_names())
def test_sample_barcodes_are_all_read_with_boxes_on_the_symbols(name: str) -> None:
    with Image.open(SAMPLES / name) as src:
        image = src.convert("RGB")
    analyzer = BarcodeAnalyzer()
    (res,) = analyzer.analyze([image])
    det = res.detections
    assert sorted(det.data.get("value", ())) == sorted(_expected()[name]["barcodes"])
    w, h = image.size
    for (x1, y1, x2, y2), value in zip(det.xyxy, det.data.get("value", ())):
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        # the box holds the symbol: a crop around it (plus a quiet zone) decodes to the same value alone
        m = max(24.0, 0.15 * max(x2 - x1, y2 - y1))
        crop = image.crop((max(0, x1 - m), max(0, y1 - m), min(w, x2 + m), min(h, y2 + m)))
        assert value in analyzer.read(crop).data["value"]
