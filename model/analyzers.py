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


class AnalyzerUnavailable(RuntimeError):
    """The analyzer cannot run here (no GPU, no weights, missing engine). The message says what is missing."""


class Analyzer(Protocol):
    name: str

    def analyze(self, images: Sequence[Image.Image]) -> list[AnalyzerResult]:
        """``images`` are upright RGB; returns exactly one result per image, in order."""
        ...
