"""The shared Detections type: validation, constructors, filtering and row conversion."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.detections import Detections, DetectionsError


def test_grid_boxes_map_999_to_the_far_edge():
    d = Detections.from_grid_boxes((1000, 500), ["pallet"], [[0, 0, 999, 999]], scores=[0.5])
    assert d.xyxy.tolist() == [[0.0, 0.0, 1000.0, 500.0]]
    assert d.to_rows() == [{"label": "pallet", "phrase": None, "attributes": None, "x1": 0.0, "y1": 0.0,
                            "x2": 1000.0, "y2": 500.0, "score": 0.5}]


def test_rows_are_named_as_each_kinds_table_columns():
    objects = Detections.from_grid_boxes((100, 100), ["pallet"], [[0, 0, 999, 999]],
                                         data={"phrase": ["a pallet"], "colour": ["blue"]})
    assert objects.to_rows()[0] | {"x1": 0} == {"label": "pallet", "phrase": "a pallet",
                                                "attributes": {"colour": "blue"}, "x1": 0, "y1": 0.0,
                                                "x2": 100.0, "y2": 100.0, "score": None}
    lines = Detections.from_text_lines((10, 10), ["SKU 1"], [[0, 0, 5, 5]], [0.9])
    assert lines.kind == "text_lines" and lines.to_rows()[0]["text"] == "SKU 1" and "label" not in lines.to_rows()[0]
    codes = Detections.from_barcodes((10, 10), ["QRCode"], ["v"], [[0, 0, 5, 5]])
    assert {k: codes.to_rows()[0][k] for k in ("format", "value")} == {"format": "QRCode", "value": "v"}



def test_rows_hold_no_nul():
    """PostgreSQL refuses NUL in text: a model's answer (or a binary barcode) that decodes to one is stored with
    U+FFFD in its place, in every text column."""
    lines = Detections.from_text_lines((10, 10), ["a\x00b"], [[0, 0, 5, 5]], [0.9])
    objects = Detections.from_grid_boxes((10, 10), ["p\x00"], [[0, 0, 9, 9]], data={"phrase": ["\x00q"]})
    codes = Detections.from_barcodes((10, 10), ["QRCode"], ["\x00\x01"], [[0, 0, 5, 5]])
    assert lines.to_rows()[0]["text"] == "a\ufffdb"
    assert {k: objects.to_rows()[0][k] for k in ("label", "phrase")} == {"label": "p\ufffd", "phrase": "\ufffdq"}
    assert codes.to_rows()[0]["value"] == "\ufffd\x01"

@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"xyxy": [[5, 0, 1, 1]]}, "x1 <= x2"),
        ({"xyxy": [[0, 0, 11, 1]]}, "inside the 10x10 image"),
        ({"xyxy": [[0, 0, 1, float("nan")]]}, "NaN"),
        ({"labels": ("a", "b")}, "1 boxes but 2 labels"),
        ({"scores": [1.5]}, "scores must lie in"),
        ({"data": {"value": ("x", "y")}}, "column 'value' has 2 values"),
        ({"kind": "faces"}, "kind must be one of"),
    ],
)
def test_invalid_detections_raise(kwargs, message):
    args = {"kind": "objects", "image_size": (10, 10), "xyxy": [[0, 0, 1, 1]], "labels": ("a",)} | kwargs
    with pytest.raises(DetectionsError, match=message):
        Detections(**args)


def test_grid_values_outside_0_999_are_rejected():
    with pytest.raises(DetectionsError, match="0..999"):
        Detections.from_grid_boxes((10, 10), ["a"], [[0, 0, 1000, 5]])


def test_filter_by_mask_keeps_columns_aligned():
    d = Detections.from_barcodes((100, 100), ["QRCode", "Code128", "EAN13"], ["a", "b", "c"],
                                 [[0, 0, 10, 10], [10, 10, 20, 20], [30, 30, 40, 40]])
    kept = d[np.array([True, False, True])]
    assert len(kept) == 2 and kept.labels == ("QRCode", "EAN13") and kept.data["value"] == ("a", "c")
    assert [r["value"] for r in kept.to_rows()] == ["a", "c"]
    assert len(d[np.zeros(3, bool)]) == 0


def test_arrays_are_read_only():
    d = Detections.from_text_lines((50, 50), ["hi"], [[1, 1, 5, 5]], [0.9])
    with pytest.raises(ValueError):
        d.xyxy[0, 0] = 3


@given(
    st.integers(1, 5000), st.integers(1, 5000),
    st.lists(st.tuples(*[st.integers(0, 999)] * 4), max_size=20),
)
def test_any_ordered_grid_box_lands_inside_the_image(w, h, boxes):
    ordered = [(min(a, c), min(b, d), max(a, c), max(b, d)) for a, b, c, d in boxes]
    det = Detections.from_grid_boxes((w, h), ["x"] * len(ordered), ordered)
    assert len(det) == len(ordered)
    if ordered:
        assert det.xyxy[:, [0, 2]].max() <= w and det.xyxy[:, [1, 3]].max() <= h and det.xyxy.min() >= 0


@given(st.lists(st.tuples(*[st.floats(-50, 150, allow_nan=False)] * 4), max_size=20))
def test_engine_boxes_are_ordered_and_clipped(points):
    det = Detections.from_barcodes((100, 80), ["QRCode"] * len(points), ["v"] * len(points), points)
    assert np.all(det.xyxy[:, 0] <= det.xyxy[:, 2]) and np.all(det.xyxy[:, 1] <= det.xyxy[:, 3])
    assert np.all(det.xyxy >= 0) and np.all(det.xyxy[:, [0, 2]] <= 100) and np.all(det.xyxy[:, [1, 3]] <= 80)
