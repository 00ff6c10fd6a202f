"""``barcode``: every symbology zxing-cpp reads (1D and 2D), one result per image, boxes axis-aligned around
the four position corners the reader reports.

A first pass reads the whole upright image as zxing-cpp does by default; with ``scene_pass`` (the default) a second
pass (``model.engines.barcode_scene``) reads the barcode-like regions the first pass left unread, straightened and
enlarged: turned and small 1D codes in camera scenes. bench/barcode_scenes.py measures both passes."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Sequence

import numpy as np
from PIL import Image

from model.analyzers import AnalyzerResult, AnalyzerUnavailable, ImageLimits, Lineage
from model.detections import Detections
from model.engines import barcode_scene

ENGINE = "zxing-cpp"


def _engine_version() -> str:
    try:
        return version("zxing-cpp")
    except PackageNotFoundError:  # pragma: no cover - the import below fails first
        return "unknown"


class BarcodeAnalyzer:
    """zxing-cpp over the whole upright image: all formats, rotated and inverted symbols included; then, with
    ``scene_pass``, over the barcode-like regions it left unread."""

    name = "barcode"
    # zxing works on the pixels as they are (no upscaling): a thin strip around a 1D code is a valid input.
    limits = ImageLimits(min_side=1, max_wide=200.0, max_tall=200.0)

    def __init__(self, try_rotate: bool = True, try_downscale: bool = True, try_invert: bool = True,
                 scene_pass: bool = True) -> None:
        try:
            import zxingcpp
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise AnalyzerUnavailable(f"barcode: zxing-cpp is not installed ({e}); pip install zxing-cpp") from e
        self._zx = zxingcpp
        if scene_pass:  # OpenCV is loaded with the engine, not at the first scene: a worker caps its address space
            import cv2  # noqa: F401  after start-up (workers.limits), and a library mapped under the cap can crash

        self.settings = {"formats": "all", "try_rotate": try_rotate, "try_downscale": try_downscale,
                         "try_invert": try_invert, "scene_pass": scene_pass}
        self._lineage = Lineage(analyzer=self.name, engine=ENGINE, version=_engine_version(),
                                settings=dict(self.settings))

    def lineage(self) -> Lineage:
        return self._lineage

    def read(self, image: Image.Image) -> Detections:
        """All barcodes in one image."""
        gray = np.asarray(image.convert("L"))  # [H, W] uint8: the reader binarises luminance anyway
        found = self._zx.read_barcodes(
            gray, try_rotate=self.settings["try_rotate"], try_downscale=self.settings["try_downscale"],
            try_invert=self.settings["try_invert"],
        )
        reads = []  # (format, value, box)
        for b in found:
            if not b.valid:
                continue
            p = b.position
            xs = [p.top_left.x, p.top_right.x, p.bottom_right.x, p.bottom_left.x]
            ys = [p.top_left.y, p.top_right.y, p.bottom_right.y, p.bottom_left.y]
            # zxing reports the centres of the outer modules' edges; +1 covers the last pixel row/column.
            reads.append((_format_name(b.format), b.text, [min(xs), min(ys), max(xs) + 1, max(ys) + 1]))
        if self.settings["scene_pass"]:
            reads = barcode_scene.second_pass(self._zx, gray, reads, self.settings["try_invert"])
        formats, values, boxes = ([r[i] for r in reads] for i in range(3))
        return Detections.from_barcodes(image.size, formats, values, boxes)

    def analyze(self, images: Sequence[Image.Image]) -> list[AnalyzerResult]:
        return [AnalyzerResult(detections=self.read(im), lineage=self._lineage) for im in images]


def _format_name(fmt: object) -> str:
    """``BarcodeFormat.Code128`` -> ``Code128``."""
    name = getattr(fmt, "name", None) or str(fmt)
    return name.rsplit(".", 1)[-1]
