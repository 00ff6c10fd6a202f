"""Analyzers by the names profiles use: ``barcode``, ``ocr`` (CPU) and ``vl2-ground``, ``vl2-ocr``, ``vl2-ask``
(DeepSeek-VL2, imported only when asked for, so CPU-only workers never import torch through here)."""

from __future__ import annotations

from typing import Any

from model.analyzers import Analyzer, AnalyzerUnavailable

ANALYZER_NAMES = ("barcode", "ocr", "vl2-ground", "vl2-ocr", "vl2-ask")

_CPU_OPTIONS = {
    "barcode": ("try_rotate", "try_downscale", "try_invert", "scene_pass"),
    "ocr": ("text_score", "threads"),
}


def build_analyzer(name: str, options: dict[str, Any] | None = None) -> Analyzer:
    """A new analyzer ``name`` configured by ``options``.

    Raises ``ValueError`` for an unknown name or option and ``AnalyzerUnavailable`` (with a message saying
    what is missing) when the analyzer cannot run in this process, e.g. no VL2 checkpoint is configured.
    """
    opts = dict(options or {})
    if name not in ANALYZER_NAMES:
        raise ValueError(f"unknown analyzer {name!r}; known analyzers: {', '.join(ANALYZER_NAMES)}")
    if name in _CPU_OPTIONS:
        opts.pop("phrases", None)  # profiles may list phrases for their grounding analyzer only
        unknown = sorted(set(opts) - set(_CPU_OPTIONS[name]))
        if unknown:
            raise ValueError(f"analyzer {name!r} has no option(s) {', '.join(unknown)}; "
                             f"it accepts: {', '.join(_CPU_OPTIONS[name])}")
        if name == "barcode":
            from model.engines.barcode import BarcodeAnalyzer

            return BarcodeAnalyzer(**opts)
        from model.engines.ocr import OcrAnalyzer

        return OcrAnalyzer(**opts)
    try:
        if name == "vl2-ask":
            from model.vl2.ask import build_ask_analyzer as build
        else:
            from model.vl2.analyzer import build_vl2_analyzer as build
    except ImportError as e:
        raise AnalyzerUnavailable(f"{name}: the DeepSeek-VL2 code cannot be imported here ({e}); "
                                  "install the GPU worker dependencies (torch)") from e
    return build(name, opts)
