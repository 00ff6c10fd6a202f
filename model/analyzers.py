"""The analyzer interface: a batch of decoded, upright RGB images in, one result per image out.

Every engine (barcodes, CPU OCR, DeepSeek-VL2 grounding and OCR) implements ``Analyzer``. A profile in the
YAML configuration names the analyzers a source runs; ``model.registry`` builds them by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from PIL import Image

from model.detections import Detections


@dataclass(frozen=True)
class Lineage:
    """Where a result came from: stored with every result row."""

    analyzer: str  # the name a profile uses: "barcode", "ocr", "vl2-ground"...
    engine: str  # the library or model family: "zxing-cpp", "rapidocr", "deepseek-vl2"
    version: str  # engine version
    model_id: str | None = None
    checkpoint_digest: str | None = None
    prompt: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "analyzer": self.analyzer, "engine": self.engine, "version": self.version, "model_id": self.model_id,
            "checkpoint_digest": self.checkpoint_digest, "prompt": self.prompt, "settings": dict(self.settings),
        }


@dataclass(frozen=True)
class AnalyzerResult:
    """One analyzer's output for one image: its detections and, for ``vl2-ask``, its answers to the profile's
    checks (``model.vl2.ask.CheckAnswer``, in check order)."""

    detections: Detections
    lineage: Lineage
    answers: tuple[Any, ...] = ()


@dataclass(frozen=True)
class ImageLimits:
    """The image shapes an analyzer is run on, checked before it runs: a side under ``min_side`` pixels holds
    nothing it can read, and past an aspect ratio (``max_wide``: width / height, ``max_tall``: height / width)
    its own resizing makes the work grow with the ratio (RapidOCR scales the short side of a tall image up to
    736 pixels: a 32x2000 strip becomes 736x46000)."""

    min_side: int = 2
    max_wide: float = 20.0
    max_tall: float = 20.0

    def refusal(self, name: str, size: tuple[int, int]) -> str | None:
        """Why analyzer ``name`` is not run on an image of ``size`` (width, height), or None when it is."""
        w, h = size
        if min(w, h) < self.min_side:
            return (f"image is {w}x{h} pixels: a side under {self.min_side} pixels is too small for analyzer "
                    f"{name}; upload a larger image")
        for shape, ratio, bound in (("wide", w / h, self.max_wide), ("tall", h / w, self.max_tall)):
            if ratio > bound:
                return (f"image is {w}x{h} pixels, {ratio:.1f} times as {shape} as it is "
                        f"{'high' if shape == 'wide' else 'wide'}, over the {bound:g} analyzer {name} accepts; "
                        "crop it into parts or pad it")
        return None


DEFAULT_LIMITS = ImageLimits()


def limits_of(analyzer: object) -> ImageLimits:
    """The analyzer's own ``limits``, else the defaults."""
    limits = getattr(analyzer, "limits", None)
    return limits if isinstance(limits, ImageLimits) else DEFAULT_LIMITS


class AnalyzerUnavailable(RuntimeError):
    """The analyzer cannot run here (no GPU, no weights, missing engine). The message says what is missing."""


class Analyzer(Protocol):
    name: str
    limits: ImageLimits  # optional: the image shapes it accepts (``limits_of`` gives the defaults otherwise)

    def analyze(self, images: Sequence[Image.Image]) -> list[AnalyzerResult]:
        """``images`` are upright RGB; returns exactly one result per image, in order."""
        ...
