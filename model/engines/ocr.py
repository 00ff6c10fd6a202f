"""``ocr``: RapidOCR 3 (PP-OCR detection + recognition on onnxruntime) as the CPU text reader.

The ONNX models are the ones shipped inside the ``rapidocr`` wheel and are passed by explicit path, so the
engine never downloads anything; a wheel without them is ``AnalyzerUnavailable``. One engine per process,
built lazily under a lock on first use; calls into it are serialised (RapidOCR keeps per-call state).
"""

from __future__ import annotations

import logging
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from model.analyzers import AnalyzerResult, AnalyzerUnavailable, ImageLimits, Lineage
from model.detections import Detections

ENGINE = "rapidocr"
# The model files the rapidocr 3.x wheel ships in rapidocr/models/ (PP-OCRv6 small det/rec, v2 mobile cls).
MODEL_FILES = {
    "Det": "PP-OCRv6_det_small.onnx",
    "Cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
    "Rec": "PP-OCRv6_rec_small.onnx",
}

_ENGINE: Any = None
_ENGINE_KEY: tuple | None = None
_BUILD_LOCK = threading.Lock()
_CALL_LOCK = threading.Lock()


def _engine_version() -> str:
    try:
        return version("rapidocr")
    except PackageNotFoundError:
        return "unknown"


def _model_dir() -> Path:
    try:
        import rapidocr
    except ImportError as e:
        raise AnalyzerUnavailable(f"ocr: the rapidocr package is not installed ({e}); "
                                  "pip install rapidocr onnxruntime") from e
    return Path(rapidocr.__file__).resolve().parent / "models"


def _quiet() -> None:
    """RapidOCR logs every model path at INFO and onnxruntime warns about unused initialisers: silence both."""
    for name in ("RapidOCR", "rapidocr"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)  # errors only
    except ImportError as e:
        raise AnalyzerUnavailable(f"ocr: onnxruntime is not installed ({e}); pip install onnxruntime") from e


def get_engine(threads: int = -1) -> Any:
    """The process's RapidOCR engine (built on first call, thread-safe)."""
    global _ENGINE, _ENGINE_KEY
    key = (threads,)
    with _BUILD_LOCK:
        if _ENGINE is not None and _ENGINE_KEY == key:
            return _ENGINE
        models = _model_dir()
        missing = [f for f in MODEL_FILES.values() if not (models / f).is_file()]
        if missing:
            raise AnalyzerUnavailable(f"ocr: the rapidocr wheel in {models} lacks {', '.join(missing)}; "
                                      "reinstall rapidocr 3.x (models are never downloaded at run time)")
        _quiet()
        from rapidocr import RapidOCR

        params: dict[str, Any] = {"Global.log_level": "error"}
        for task, fname in MODEL_FILES.items():
            params[f"{task}.model_path"] = str(models / fname)
        params["EngineConfig.onnxruntime.intra_op_num_threads"] = threads
        try:
            engine = RapidOCR(params=params)
        except Exception as e:  # noqa: BLE001 - any failure here means the engine cannot run
            raise AnalyzerUnavailable(f"ocr: cannot start RapidOCR: {e}") from e
        _quiet()  # RapidOCR resets its logger's level from the config on construction
        _ENGINE, _ENGINE_KEY = engine, key
        return engine


class OcrAnalyzer:
    """Text lines (axis-aligned boxes around RapidOCR's quadrilaterals) with recognition scores."""

    name = "ocr"
    # Text detection scales the short side up to 736 pixels, so its cost grows with the aspect ratio. RapidOCR
    # pads wide images to 8:1 first (up to 60:1 they stay within ~2944x736 for the detector; past it the
    # 30-pixel minimum height upscales them again); tall ones it does not pad: 8:1 keeps the detector's input
    # under ~736x5900 (4.3 MP). A side under 8 pixels cannot hold a readable character.
    limits = ImageLimits(min_side=8, max_wide=60.0, max_tall=8.0)

    def __init__(self, text_score: float = 0.5, threads: int = -1) -> None:
        self.text_score, self.threads = float(text_score), int(threads)
        _model_dir()  # fail early (AnalyzerUnavailable) when the package is missing; the engine loads lazily
        self._lineage = Lineage(
            analyzer=self.name, engine=ENGINE, version=_engine_version(), model_id="PP-OCRv6-small",
            settings={"text_score": self.text_score, "det": MODEL_FILES["Det"], "cls": MODEL_FILES["Cls"],
                      "rec": MODEL_FILES["Rec"]},
        )

    def lineage(self) -> Lineage:
        return self._lineage

    def read(self, image: Image.Image) -> Detections:
        engine = get_engine(self.threads)
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])  # [H, W, 3] RGB -> BGR
        with _CALL_LOCK:
            out = engine(bgr, text_score=self.text_score)
        if out.boxes is None or out.txts is None or not len(out.txts):
            return Detections.empty("text_lines", image.size)
        quads = np.asarray(out.boxes, dtype=np.float64).reshape(-1, 4, 2)  # [n, 4 corners, (x, y)]
        xyxy = np.concatenate([quads.min(axis=1), quads.max(axis=1)], axis=1)  # [n, 4] x1 y1 x2 y2
        scores = np.clip(np.asarray(out.scores, dtype=np.float64), 0.0, 1.0)
        return Detections.from_text_lines(image.size, [str(t) for t in out.txts], xyxy, scores)

    def analyze(self, images: Sequence[Image.Image]) -> list[AnalyzerResult]:
        return [AnalyzerResult(detections=self.read(im), lineage=self._lineage) for im in images]
