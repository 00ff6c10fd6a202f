"""The scoring functions on hand-made cases: every number is worked out in the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.evaluation import degrade as deg
from services.evaluation.diff import diff_image, diff_sides
from services.evaluation.grounding import grounding_metrics
from services.evaluation.metrics import barcode_metrics, check_metrics, ocr_metrics, timing_summary
from services.evaluation.runner import result_answers
from services.evaluation.truth import ImageTruth, TruthError, load_truth


def code(fmt: str, value: str) -> dict:
    return {"format": fmt, "value": value, "x1": 0.0, "y1": 0.0, "x2": 1.0, "y2": 1.0}


def test_barcodes_decode_rate_recall_precision_and_wrong_values() -> None:
    truth = [{"format": "Code128", "value": "A"}, {"format": "QRCode", "value": "A"}, {"format": "EAN13", "value": "B"}]
    pred = [code("Code128", "A"), code("EAN13", "C")]
    m = barcode_metrics([(truth, pred), (None, [code("QRCode", "ignored")]), ([], [])])
    assert (m["images"], m["symbols"], m["decoded"]) == (2, 3, 1)
    assert m["decode_rate"] == round(1 / 3, 6)
    assert m["recall"] == 0.5 and m["precision"] == 0.5 and m["wrong_values"] == 1  # values {A, B} vs {A, C}
    assert m["by_format"]["QRCode"] == {"symbols": 1, "decoded": 0, "decode_rate": 0.0}


def test_ocr_cer_and_exact_lines() -> None:
    truth = [{"text": "SKU: WH-12345"}, {"text": "Aisle 4  Bay 12"}, {"text": "unread"}]
    pred = [{"text": "SKU: WH-12346"}, {"text": "Aisle 4 Bay 12"}, {"text": "noise"}]
    m = ocr_metrics([(truth, pred)])
    # one substitution; the double space is white space; "unread" (6 chars) is not read: "noise" is too far
    assert m["cer"] == round((1 + 0 + 6) / (13 + 14 + 6), 6)
    assert m["exact_lines"] == 1 and m["exact_line_recall"] == round(1 / 3, 6)
    assert m["line_precision"] == round(1 / 3, 6)


def test_grounding_per_label_precision_recall_iou() -> None:
    truth = [{"label": "pallet", "box": (0, 0, 10, 10)}, {"label": "person", "box": (20, 20, 30, 40)}]
    pred = [{"label": "pallet", "x1": 0, "y1": 0, "x2": 10, "y2": 8, "score": 0.9},  # IoU 0.8
            {"label": "pallet", "x1": 50, "y1": 50, "x2": 60, "y2": 60, "score": 0.8},  # false positive
            {"label": "forklift", "x1": 0, "y1": 0, "x2": 5, "y2": 5, "score": 0.5}]  # a label the truth lacks
    m = grounding_metrics([(truth, pred), (None, pred)])
    p = m["by_label"]["pallet"]
    assert (p["truth"], p["predicted"], p["matched"], p["precision"], p["recall"]) == (1, 2, 1, 0.5, 1.0)
    assert p["mean_iou"] == pytest.approx(0.8)
    assert m["by_label"]["person"]["recall"] == 0.0 and m["by_label"]["person"]["precision"] is None
    assert m["unlabelled_predictions"] == {"forklift": 1}
    assert (m["precision"], m["recall"]) == (0.5, 0.5)


def test_checks_accuracy_unparsed_and_the_answers_of_vl2_ask() -> None:
    from types import SimpleNamespace as NS

    answers = (NS(check=NS(name="door"), value="open", status="ok", raw="Open."),
               NS(check=NS(name="count"), value=None, status="unparsed", raw="many"))
    got = result_answers(NS(lineage=NS(analyzer="vl2-ask"), answers=answers))
    assert got["door"]["value"] == "open" and got["count"]["status"] == "unparsed" and got["count"]["raw"] == "many"
    assert result_answers(NS(lineage=NS(analyzer="barcode"), answers=())) is None  # an analyzer without answers
    m = check_metrics([({"door": "Open", "count": 3}, got), ({"door": "closed"}, None)])
    assert (m["labelled"], m["correct"], m["unparsed"], m["unanswered"]) == (3, 1, 1, 1)
    assert m["accuracy"] == round(1 / 3, 6) and m["answered"] is True


def test_timings_percentiles() -> None:
    t = timing_summary({"barcode": [0.1, 0.2, 0.3, 0.4]}, 4)
    assert t["analyzers"]["barcode"]["p50_s"] == pytest.approx(0.25)
    assert t["images_per_s"] == pytest.approx(4)


def test_degradations_are_seeded_and_tilt_moves_boxes() -> None:
    im = Image.new("RGB", (200, 100), (200, 200, 200))
    im.paste((0, 0, 0), (20, 30, 60, 50))
    truth = ImageTruth("a.png", objects=[{"label": "x", "box": (20, 30, 60, 50)}])
    a, _ = deg.degrade(im, truth, "noise", 2, seed=1)
    b, _ = deg.degrade(im, truth, "noise", 2, seed=1)
    c, _ = deg.degrade(im, truth, "noise", 2, seed=2)
    assert a.tobytes() == b.tobytes() != c.tobytes()
    turned, moved = deg.degrade(im, truth, "tilt", 3, seed=0)  # 30 degrees
    x1, y1, x2, y2 = (int(v) for v in moved.objects[0]["box"])
    dark = np.asarray(turned.convert("L"))[y1:y2, x1:x2] < 60
    assert dark.mean() > 0.3  # the black block is inside its moved box...
    ys, xs = np.nonzero(np.asarray(turned.convert("L")) < 60)
    assert xs.min() >= x1 - 1 and xs.max() <= x2 + 1 and ys.min() >= y1 - 1 and ys.max() <= y2 + 1  # ...all of it
    assert deg.parse_degradations("all") == list(deg.NAMES)
    with pytest.raises(deg.DegradeError, match="unknown degradation"):
        deg.parse_degradations("blur,fog")


def test_truth_file_with_coco_objects_and_unlabelled_kinds(tmp_path: Path) -> None:
    Image.new("RGB", (10, 10)).save(tmp_path / "a.png")
    Image.new("RGB", (10, 10)).save(tmp_path / "b.png")
    (tmp_path / "truth.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.png", "barcodes": []}, {"id": 8, "file_name": "b.png"}],
        "categories": [{"id": 1, "name": "pallet"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4]}]}))
    t = load_truth(tmp_path)
    a, b = t.images
    assert a.objects == [{"label": "pallet", "box": (1.0, 2.0, 4.0, 6.0)}] and b.objects == []
    assert a.labelled("barcodes") and not b.labelled("barcodes") and not a.labelled("text_lines")
    (tmp_path / "truth.json").write_text(json.dumps({"images": [{"file_name": "a.png", "objects": [{"label": "x"}]}]}))
    with pytest.raises(TruthError, match=r"images\[0\]\.objects\[0\]: an object is"):
        load_truth(tmp_path)


def test_diff_lists_each_kind_of_change() -> None:
    box = {"x1": 0.0, "y1": 0.0, "x2": 10.0, "y2": 10.0}
    a = {"barcodes": [code("Code128", "A"), code("QRCode", "B")], "text_lines": [{"text": "SKU: WH-1"}, {"text": "old"}],
         "objects": [{"label": "pallet", **box}, {"label": "person", **box}], "answers": {"door": {"value": "open"}}}
    b = {"barcodes": [code("Code128", "A"), code("EAN13", "C")], "text_lines": [{"text": "SKU: WH-7"}, {"text": "new line"}],
         "objects": [{"label": "pallet", "x1": 1.0, "y1": 0.0, "x2": 10.0, "y2": 10.0}],
         "answers": {"door": {"value": "closed"}}}
    d = diff_image(a, b)
    assert d["barcodes_gained"] == ["EAN13 C"] and d["barcodes_lost"] == ["QRCode B"]
    assert d["text_changed"] == [{"from": "SKU: WH-1", "to": "SKU: WH-7", "distance": 1}]
    assert d["text_gained"] == ["new line"] and d["text_lost"] == ["old"]
    assert (d["objects_matched"], d["objects_gained"], d["objects_lost"]) == (1, [], ["person"])
    assert d["answers_changed"] == {"door": {"from": "open", "to": "closed"}}
    assert diff_sides({"x": a, "y": a}, {"x": a, "z": a}) == [{"image": "y", "only_in": "a"},
                                                               {"image": "z", "only_in": "b"}]
