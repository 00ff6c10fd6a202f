"""The grounding parser on hostile model output: ASCII digits only, no zero-area boxes, linear time however
long a truncated ``<|det|>`` span runs."""

from __future__ import annotations

import time

import pytest

from model.vl2 import grounding as g


@pytest.mark.parametrize("digits", ["１２", "٣", "१२", "𝟏𝟐"])
def test_digits_other_than_ascii_are_malformed(digits: str) -> None:
    r = g.parse_answer(f"<|ref|>a<|/ref|><|det|>[[{digits}, 2, 30, 40]]<|/det|>")
    assert r.status == "malformed" and r.n_boxes == 0
    assert int(digits)  # what int() would have read


@pytest.mark.parametrize("box", ["[5, 5, 5, 9]", "[5, 5, 9, 5]", "[0, 0, 0, 0]", "[999, 1, 999, 1]"])
def test_zero_area_boxes_are_refused(box: str) -> None:
    r = g.parse_answer(f"<|ref|>a<|/ref|><|det|>[{box}, [1, 2, 3, 4]]<|/det|>")
    assert r.status == "zero_area" and [ref.boxes for ref in r.refs] == [((1, 2, 3, 4),)]
    assert ("zero_area", box) in r.issues


def _seconds(text: str) -> float:
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        g.parse_answer(text)
        best = min(best, time.perf_counter() - t)
    return best


@pytest.mark.parametrize("unit", ["x[", ", y ["])
def test_a_long_truncated_det_span_parses_in_linear_time(unit: str) -> None:
    head = "<|ref|>a<|/ref|><|det|>[[1,2,3,4]"
    small, large = _seconds(head + unit * 50_000 + "]"), _seconds(head + unit * 200_000 + "]")
    assert large / small < 8, (small, large)  # 4x the text: about 4x the time (quadratic: 16x)
    r = g.parse_answer(head + unit * 40_000 + "]")
    assert r.status == "malformed" and r.refs[0].boxes[0] == (1, 2, 3, 4)
