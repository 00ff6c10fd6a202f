"""model.registry: names, options, and the VL2 analyzers' plain refusal without a checkpoint."""

from __future__ import annotations

import pytest

from model.analyzers import AnalyzerUnavailable
from model.engines.barcode import BarcodeAnalyzer
from model.engines.ocr import OcrAnalyzer
from model.registry import ANALYZER_NAMES, build_analyzer


def test_names_match_the_config_schema() -> None:
    from services.config import ANALYZERS

    assert tuple(ANALYZER_NAMES) == tuple(ANALYZERS)


def test_cpu_engines_by_name_with_options() -> None:
    b = build_analyzer("barcode")
    assert isinstance(b, BarcodeAnalyzer) and b.name == "barcode"
    assert build_analyzer("barcode", {"try_rotate": False}).settings["try_rotate"] is False
    o = build_analyzer("ocr", {"text_score": 0.7})
    assert isinstance(o, OcrAnalyzer) and o.name == "ocr" and o.text_score == 0.7
    assert isinstance(build_analyzer("ocr", {"phrases": []}), OcrAnalyzer)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError) as e:
        build_analyzer("yolo")
    for n in ANALYZER_NAMES:
        assert n in str(e.value)


def test_unknown_option_is_named() -> None:
    with pytest.raises(ValueError, match="colour"):
        build_analyzer("barcode", {"colour": "red"})


@pytest.mark.parametrize("name", ["vl2-ground", "vl2-ocr"])
def test_vl2_without_checkpoint_is_unavailable_with_a_plain_message(name: str) -> None:
    with pytest.raises(AnalyzerUnavailable, match="VLWATCH_VL2_CHECKPOINT"):
        build_analyzer(name, {"phrases": ["pallet"], "checkpoint": None, "device": "cpu", "dtype": "float32"})


def test_vl2_with_missing_directory_says_so(tmp_path) -> None:  # noqa: ANN001
    missing = tmp_path / "nope"
    with pytest.raises(AnalyzerUnavailable, match="does not exist"):
        build_analyzer("vl2-ocr", {"checkpoint": str(missing), "device": "cpu"})


def test_cpu_engines_run_without_torch_or_network() -> None:
    """A CPU worker: building and running barcode + ocr imports no torch and opens no socket (no downloads)."""
    import subprocess
    import sys

    code = """
import socket, sys
def refuse(*a, **k):
    raise OSError("network disabled in this test")
socket.socket.connect = refuse
socket.create_connection = refuse
from PIL import Image
from model.registry import build_analyzer
from tests.images import draw_label
img, _ = draw_label("WH-90001")
texts = build_analyzer("ocr").analyze([img])[0].detections.data["text"]
values = build_analyzer("barcode").analyze([img])[0].detections.data["value"]
assert any("WH-90001" in t for t in texts), texts
assert "WH-90001" in values, values
sys.exit(3 if "torch" in sys.modules else 0)
"""
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "" and proc.stderr == ""  # quiet
