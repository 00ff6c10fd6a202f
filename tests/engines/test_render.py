"""services.render: boxes and captions are drawn on a copy; the outline pixels change, the rest does not."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from services.render import COLOURS, caption, render_annotated, save_png


def _grey(w: int = 400, h: int = 300) -> Image.Image:
    return Image.new("RGB", (w, h), (128, 128, 128))


def test_outlines_change_pixels_in_each_kinds_colour() -> None:
    base = _grey()
    results = [
        ("objects", [{"label": "pallet", "phrase": "pallet", "x1": 50.0, "y1": 80.0, "x2": 150.0, "y2": 200.0,
                      "score": 0.9, "attributes": None}]),
        ("text_lines", [{"text": "SKU: WH-10427", "x1": 200.0, "y1": 60.0, "x2": 380.0, "y2": 90.0, "score": 0.99}]),
        ("barcodes", [{"format": "Code128", "value": "WH-10427", "x1": 200.0, "y1": 150.0, "x2": 380.0,
                       "y2": 280.0}]),
    ]
    out = render_annotated(base, results)
    assert out.size == base.size and out.mode == "RGB"
    a = np.asarray(out)
    assert (np.asarray(base) == 128).all()  # input untouched
    for (kind, rows) in results:
        r = rows[0]
        x1, y1, x2, y2 = (int(r[k]) for k in ("x1", "y1", "x2", "y2"))
        colour = COLOURS[kind]
        # left and right edges along the lower half of the box (away from the caption), and the bottom edge
        for y in range((y1 + y2) // 2, y2):
            assert tuple(a[y, x1]) == colour and tuple(a[y, x2]) == colour, (kind, y)
        for x in range(x1 + 10, x2 - 10):
            assert tuple(a[y2, x]) == colour, (kind, x)
        # the box interior below the caption stays as it was
        assert (a[(y1 + y2) // 2 + 5, x1 + 10:x2 - 10] == 128).all()
        # the caption sits just above the box
        above = a[max(0, y1 - 8), x1:x1 + 20]
        assert (above == colour).all(axis=-1).any()
    assert (a[5:40, 5:40] == 128).all()  # far from every box: unchanged


def test_boxes_at_and_past_the_edges_are_clipped() -> None:
    out = render_annotated(_grey(100, 80), [("objects", [{"label": "x", "x1": -10, "y1": -5, "x2": 140,
                                                          "y2": 90, "score": None}])])
    a = np.asarray(out)
    assert tuple(a[79, 50]) == COLOURS["objects"] and tuple(a[40, 99]) == COLOURS["objects"]


def test_nothing_to_draw_is_an_identical_copy() -> None:
    base = _grey()
    out = render_annotated(base, [("objects", []), ("text_lines", []), ("barcodes", [])])
    assert out is not base and np.array_equal(np.asarray(out), np.asarray(base))


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="faces"):
        render_annotated(_grey(), [("faces", [{"x1": 0, "y1": 0, "x2": 1, "y2": 1}])])


def test_captions() -> None:
    assert caption("barcodes", {"format": "QRCode", "value": "abc"}) == "QRCode: abc"
    assert caption("objects", {"label": "forklift", "score": 0.5}) == "forklift 0.50"
    assert caption("text_lines", {"text": "x" * 100}).endswith("\u2026")


def test_render_does_not_import_torch() -> None:
    import subprocess

    code = "import sys, services.render; sys.exit(1 if 'torch' in sys.modules else 0)"
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], check=False, cwd=root).returncode == 0


def test_save_png_writes_a_png_that_reads_back_identically(tmp_path) -> None:
    out = render_annotated(_grey(120, 90), [("barcodes", [{"label": "QRCode", "value": "v", "x1": 10, "y1": 20,
                                                           "x2": 60, "y2": 70}])])
    dest = save_png(out, tmp_path / "sub" / "annotated.png")
    assert dest == tmp_path / "sub" / "annotated.png"
    assert [p.name for p in dest.parent.iterdir()] == ["annotated.png"]  # no temporary file left behind
    with Image.open(dest) as back:
        assert back.format == "PNG"
        assert back.size == (120, 90)
        assert np.array_equal(np.asarray(back.convert("RGB")), np.asarray(out))
