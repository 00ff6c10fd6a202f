"""DeepSeek-VL2 analyzers: ``vl2-ground`` (one "find all" prompt per configured phrase: every instance; boxes on
VL2's 0..999 grid) and ``vl2-ocr`` (a reading prompt; grounded lines when the answer carries boxes).

Both share one loaded checkpoint per process (``load_model`` + the processor from the same directory) and raise
``AnalyzerUnavailable`` with a plain message when no checkpoint is configured, the directory is unusable, or the
requested CUDA device is absent. Images are decoded in batches (``images_per_batch`` x prompts); each image
goes through the vision tower once for all of its prompts.
Prompts and answer parsing are ``model.vl2.grounding``'s (find-all prompt per phrase, strict parser); box score =
mean probability of the chosen tokens of that box's ``[...]`` text (``grounding.parse_tokens``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from PIL import Image

from model.analyzers import AnalyzerResult, AnalyzerUnavailable, Lineage
from model.detections import Detections

if TYPE_CHECKING:
    from model.vl2.generation import GenerationConfig

ENGINE = "deepseek-vl2"
ENGINE_VERSION = "1"


@dataclass(frozen=True)
class Ask:
    """One prompt an analyzer puts to an image: the user turn, whether it shows the source's previous image before
    the current one (two ``<image>`` placeholders, previous first), and its decoding settings."""

    prompt: str
    paired: bool
    config: GenerationConfig


@dataclass(frozen=True)
class VL2Options:
    checkpoint: Path | None
    device: str = "cuda"
    dtype: str = "bfloat16"
    max_new_tokens: int = 256
    prefill_chunk: int | None = None
    repeat_ngram: int = 16  # the OCR loop guard (see GenerationConfig)
    repeat_times: int = 4
    images_per_batch: int = 4  # images decoded together (x number of prompts = generation batch)


class VL2Analyzer:
    """``name`` is "vl2-ground" (needs ``phrases``) or "vl2-ocr"."""

    def __init__(self, name: str, options: VL2Options, phrases: Sequence[str] = ()) -> None:
        if name not in ("vl2-ground", "vl2-ocr"):
            raise ValueError(f"unknown VL2 analyzer {name!r}")
        if name == "vl2-ground" and not phrases:
            raise ValueError("vl2-ground needs at least one phrase")
        self.name, self.options, self.phrases = name, options, tuple(phrases)
        self.model, self.processor, info = load_shared(name, options)
        self.digest = info.digest
        self.model_id = f"deepseek-vl2-{info.config.name}"

    def prompts(self) -> list[str]:
        from model.vl2 import grounding

        if self.name == "vl2-ground":
            return [grounding.find_all_prompt(p) for p in self.phrases]  # every instance (docs/checks.md)
        return [grounding.ocr_prompt()]

    def lineage(self) -> Lineage:
        o = self.options
        return Lineage(analyzer=self.name, engine=ENGINE, version=ENGINE_VERSION, model_id=self.model_id,
                       checkpoint_digest=self.digest, prompt=" | ".join(self.prompts()),
                       settings={"dtype": o.dtype, "max_new_tokens": o.max_new_tokens, "decoding": "greedy"})

    def generation_config(self) -> GenerationConfig:
        """The decoding settings of every prompt of this analyzer: greedy."""
        from model.vl2.generation import GenerationConfig

        o = self.options
        return GenerationConfig(max_new_tokens=o.max_new_tokens, eos_token_id=self.processor.tokenizer.eos_id,
                                prefill_chunk=o.prefill_chunk,
                                repeat_ngram=o.repeat_ngram if self.name == "vl2-ocr" else 0,
                                repeat_times=o.repeat_times)

    def asks(self, has_previous: bool = False) -> list[Ask]:
        """The prompts put to one image, in the order ``result`` takes their answers (``has_previous``: the image
        has a previous one, for checks that compare; grounding and OCR ignore it)."""
        config = self.generation_config()
        return [Ask(p, False, config) for p in self.prompts()]

    def result(self, size: tuple[int, int], has_previous: bool, tokens: Sequence[list[int]],
               probs: Sequence[list[float]]) -> AnalyzerResult:
        """The result for one image of ``size`` from the answers (greedy ids and their probabilities) to
        ``asks(has_previous)``, in that order; the one conversion from answers to Detections, whoever generated
        them (``analyze`` here, or the GPU worker's scheduler)."""
        if self.name == "vl2-ground":
            det = self._grounding(size, list(tokens), list(probs))
        else:
            det = self._ocr(size, tokens[0], probs[0])
        return AnalyzerResult(detections=det, lineage=self.lineage())

    def analyze(self, images: Sequence[Image.Image]) -> list[AnalyzerResult]:
        from model.vl2.generation import generate_many

        asks = self.asks()
        n_p = len(asks)
        results = []
        step = max(1, self.options.images_per_batch)
        for start in range(0, len(images), step):
            chunk = list(images[start:start + step])
            out = generate_many(self.model, self.processor, chunk, [a.prompt for a in asks],
                                asks[0].config)  # one vision pass per image
            for i, image in enumerate(chunk):
                rows = slice(i * n_p, (i + 1) * n_p)
                results.append(self.result(image.size, False, out.tokens[rows], out.probs[rows]))
        return results

    # ---- answers -> Detections ----------------------------------------------------------------------------
    def _grounding(self, size: tuple[int, int], tokens: list[list[int]], probs: list[list[float]]) -> Detections:
        """One answer per phrase; every valid box labelled with the phrase that was asked for."""
        from model.vl2.grounding import parse_tokens

        labels, boxes, scores, said = [], [], [], []
        for phrase, toks, pr in zip(self.phrases, tokens, probs):
            for ref in parse_tokens(toks, pr, self.processor.tokenizer).refs:
                for i, box in enumerate(ref.boxes):
                    labels.append(phrase)
                    boxes.append(box)
                    scores.append(ref.scores[i] if ref.scores is not None else 0.0)
                    said.append(ref.phrase)  # what the model wrote in <|ref|>
        return Detections.from_grid_boxes(size, labels, boxes, scores, {"phrase": said})

    def _ocr(self, size: tuple[int, int], tokens: list[int], probs: list[float]) -> Detections:
        """Grounded lines (text = the ref phrase) when the answer boxes them; else each answer line over the
        whole image."""
        from model.vl2.grounding import parse_tokens

        w, h = size
        parsed = parse_tokens(tokens, probs, self.processor.tokenizer)
        if parsed.n_boxes:
            objs = parsed.to_detections(size, default_score=0.0)  # grid -> pixels happens there, once
            line_scores = list(objs.scores) if objs.scores is not None else [0.0] * len(objs)
            return Detections.from_text_lines(size, list(objs.data["phrase"]), objs.xyxy, line_scores)
        mean = sum(probs) / len(probs) if probs else 0.0
        lines = [ln.strip() for ln in self.processor.tokenizer.decode(tokens, skip_special_tokens=True).splitlines()]
        lines = [ln for ln in lines if ln]
        return Detections.from_text_lines(size, lines, [[0.0, 0.0, float(w), float(h)]] * len(lines),
                                          [mean] * len(lines))


def load_shared(name: str, options: VL2Options) -> tuple[Any, Any, Any]:
    """(model, processor, CheckpointInfo) of ``options``' checkpoint for analyzer ``name``, shared by every VL2
    analyzer of the process; ``AnalyzerUnavailable`` with a plain message where it cannot be loaded."""
    ckpt = options.checkpoint
    if ckpt is None:
        raise AnalyzerUnavailable(f"{name}: no DeepSeek-VL2 checkpoint is configured "
                                  "(set VLWATCH_VL2_CHECKPOINT to a checkpoint directory)")
    if not Path(ckpt).is_dir():
        raise AnalyzerUnavailable(f"{name}: the DeepSeek-VL2 checkpoint directory {ckpt} does not exist")
    return _shared_model(name, Path(ckpt), options.device, options.dtype)


_LOADED: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}
_LOAD_LOCK = threading.Lock()


def _shared_model(name: str, ckpt: Path, device: str, dtype_name: str) -> tuple[Any, Any, Any]:
    """(model, processor, CheckpointInfo), loaded once per process for each (checkpoint, device, dtype): the
    grounding and OCR analyzers of every profile share one copy of the weights."""
    import torch

    from model.vl2.config import ConfigError
    from model.vl2.loader import CheckpointError, load_model

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AnalyzerUnavailable(f"{name}: device {device!r} requested but no CUDA device is available")
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}.get(dtype_name)
    if dtype is None:
        raise AnalyzerUnavailable(f"{name}: unsupported dtype {dtype_name!r}")
    key = (str(ckpt.resolve()), device, dtype_name)
    with _LOAD_LOCK:
        if key not in _LOADED:
            try:
                from model.vl2.processor import VL2Processor

                processor = VL2Processor.from_checkpoint(ckpt)
                model, info = load_model(ckpt, dtype=dtype, device=device)
            except (ConfigError, CheckpointError, OSError, ImportError) as e:
                raise AnalyzerUnavailable(f"{name}: cannot load DeepSeek-VL2 from {ckpt}: {e}") from e
            _LOADED[key] = (model, processor, info)
        return _LOADED[key]


def vl2_options(name: str, options: dict[str, Any]) -> tuple[VL2Options, tuple, tuple]:
    """``options`` as the runtime passes them ({"checkpoint", "device", "dtype", "phrases" (vl2-ground), "checks"
    (vl2-ask), ...}) read into ``(VL2Options, phrases, checks)``; an unknown option is a ``ValueError``."""
    opts = dict(options)
    phrases = tuple(opts.pop("phrases", ()) or ())
    checks = tuple(opts.pop("checks", ()) or ())
    ckpt = opts.pop("checkpoint", None)
    names = ("device", "dtype", "max_new_tokens", "prefill_chunk", "repeat_ngram", "repeat_times",
             "images_per_batch")
    unknown = sorted(set(opts) - set(names))
    if unknown:
        raise ValueError(f"analyzer {name!r} has no option(s) {', '.join(unknown)}; "
                         f"it accepts: checkpoint, phrases, checks, {', '.join(names)}")
    known = {k: opts[k] for k in names if k in opts}
    return VL2Options(checkpoint=Path(ckpt) if ckpt else None, **known), phrases, checks


def build_vl2_analyzer(name: str, options: dict[str, Any]) -> Any:
    """Registry entry for ``vl2-ground`` and ``vl2-ocr`` (``vl2-ask``: ``model.vl2.ask.build_ask_analyzer``)."""
    vl2, phrases, _ = vl2_options(name, options)
    return VL2Analyzer(name, vl2, phrases)
