"""``vl2-ask``: a profile's checks -- a site's own questions -- answered by DeepSeek-VL2 about every image.

One vision pass per image: the prompts of a batch (every check about every image, and the two-image prompts of
``with_previous`` checks) are tokenised together; every distinct image -- current or previous -- goes through
the vision tower and projector once, and its token embeddings are written into each prompt that shows it
(``generate_rows``). Decoding is greedy.

An answer (``CheckAnswer``) keeps its raw text and is parsed strictly into the check's kind
(``model.vl2.answers``): status ``ok`` with a typed value, or ``unparsed``. A ``with_previous`` check of an image
that has no previous one is not asked and answers ``no_previous``. ``confidence`` is the mean probability of the
answer's generated tokens (EOS excluded). ``passed`` is set only where the check has an expectation and the
answer parsed: unparsed and no_previous answers neither pass nor fail (they are for review, not alarms).
Grounded checks (``<|grounding|>`` mode) also return the boxes their prose carries, labelled with the phrase the
model wrote; the value is parsed from the prose without markup. Prompt forms: ``model.vl2.prompts``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from PIL import Image

from model.analyzers import AnalyzerResult
from model.detections import Detections, storable
from model.vl2.analyzer import Ask, VL2Analyzer, VL2Options, load_shared, vl2_options
from model.vl2.answers import KINDS, Expectation, Value, parse_answer
from model.vl2.prompts import check_prompt

STATUSES = ("ok", "unparsed", "no_previous")


@dataclass(frozen=True)
class Check:
    """One named question of a profile (validated in ``services.config`` first; checked again here)."""

    name: str
    question: str
    kind: str
    choices: tuple[str, ...] = ()
    expect: Expectation | None = None
    severity: str = "warning"
    grounded: bool = False
    with_previous: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"check {self.name!r}: unknown kind {self.kind!r} (known: {', '.join(KINDS)})")
        self.prompt  # noqa: B018 - raises ValueError for a bad question or bad choices

    @property
    def prompt(self) -> str:
        """The user turn sent for this check (``model.vl2.prompts.check_prompt``)."""
        return check_prompt(self.question, self.kind, self.choices, self.grounded, self.with_previous)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Check":
        """From the runtime's plain form: the fields above, ``expect`` as ``Expectation.as_dict()`` gives it."""
        fields = dict(d)
        expect = fields.pop("expect", None)
        fields["choices"] = tuple(fields.get("choices") or ())
        return cls(**fields, expect=Expectation(**expect) if expect else None)


@dataclass(frozen=True)
class CheckAnswer:
    check: Check
    status: str  # ok | unparsed | no_previous
    raw: str | None = None  # the decoded answer (grounded answers keep their markup)
    value: Value | None = None
    confidence: float | None = None
    reason: str | None = None  # why it did not parse
    paired: bool = False  # the prompt held the previous image
    detections: Detections | None = None  # boxes of a grounded answer (kind "objects")

    @property
    def passed(self) -> bool | None:
        if self.check.expect is None or self.status != "ok" or self.value is None:
            return None
        return self.check.expect.holds(self.value)

    def to_row(self) -> dict[str, Any]:
        """The one conversion to the ``answers`` table's columns (without job, image and lineage): the value in
        the column of its type -- ``value_bool`` (yes_no), ``value_number`` (number), ``value_text`` (choice,
        text)."""
        v = self.value
        return {"check_name": self.check.name, "question": self.check.question, "kind": self.check.kind,
                "status": self.status, "raw_text": self.raw,
                "value_bool": v if isinstance(v, bool) else None,
                "value_number": float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None,
                "value_text": v if isinstance(v, str) else None,
                "confidence": self.confidence, "reason": self.reason,
                "expected": self.check.expect.as_dict() if self.check.expect else None,
                "passed": self.passed, "severity": self.check.severity}


class VL2AskAnalyzer(VL2Analyzer):
    """``vl2-ask`` over ``checks``; shares the checkpoint (and ``lineage``) of the other VL2 analyzers."""

    def __init__(self, options: VL2Options, checks: Sequence[Check]) -> None:  # not VL2Analyzer's (ground/ocr)
        if not checks:
            raise ValueError("vl2-ask needs at least one check")
        names = [c.name for c in checks]
        if len(set(names)) != len(names):
            raise ValueError(f"vl2-ask: duplicate check names in {names}")
        self.name, self.options, self.checks, self.phrases = "vl2-ask", options, tuple(checks), ()
        self.model, self.processor, info = load_shared(self.name, options)
        self.digest = info.digest
        self.model_id = f"deepseek-vl2-{info.config.name}"

    @property
    def wants_previous(self) -> bool:
        """True when a check compares with the source's previous image (the pipeline then passes ``previous``)."""
        return any(c.with_previous for c in self.checks)

    def prompts(self) -> list[str]:
        return [c.prompt for c in self.checks]

    def asks(self, has_previous: bool = False) -> list[Ask]:
        """One prompt per check asked about an image: every check when it has a previous image, else those that
        do not compare (the others answer ``no_previous`` without being asked)."""
        config = self.generation_config()
        return [Ask(c.prompt, c.with_previous, config) for c in self._asked(has_previous)]

    def _asked(self, has_previous: bool) -> list[Check]:
        return [c for c in self.checks if has_previous or not c.with_previous]

    def result(self, size: tuple[int, int], has_previous: bool, tokens: Sequence[list[int]],
               probs: Sequence[list[float]]) -> AnalyzerResult:
        """One answer per check, in check order, from the answers to ``asks(has_previous)``."""
        got = {c.name: self._answer(c, size, t, p) for c, t, p in zip(self._asked(has_previous), tokens, probs)}
        answers = tuple(got.get(c.name) or CheckAnswer(c, "no_previous") for c in self.checks)
        return AnalyzerResult(Detections.empty("objects", size), self.lineage(), answers)

    def analyze(self, images: Sequence[Image.Image],
                previous: Sequence[Image.Image | None] | None = None) -> list[AnalyzerResult]:
        """One result per image with one answer per check, in check order; ``previous[i]`` is image i's previous
        image or None."""
        before = list(previous) if previous is not None else [None] * len(images)
        if len(before) != len(images):
            raise ValueError(f"{len(images)} images but {len(before)} previous images")
        results = []
        step = max(1, self.options.images_per_batch)
        for start in range(0, len(images), step):
            cur, prev = list(images[start:start + step]), before[start:start + step]
            asked = [self.asks(p is not None) for p in prev]
            rows = [(a.prompt, [prev[i], cur[i]] if a.paired else [cur[i]])
                    for i, asks in enumerate(asked) for a in asks]
            out = generate_rows(self.model, self.processor, rows, self.generation_config()) if rows else None
            k = 0
            for i, image in enumerate(cur):
                n = len(asked[i])
                tokens, probs = (out.tokens[k:k + n], out.probs[k:k + n]) if out is not None else ([], [])
                results.append(self.result(image.size, prev[i] is not None, tokens, probs))
                k += n
        return results

    def _answer(self, check: Check, size: tuple[int, int], tokens: list[int], probs: list[float]) -> CheckAnswer:
        from model.vl2.grounding import parse_tokens, plain_text

        tok = self.processor.tokenizer
        confidence = sum(probs) / len(probs) if probs else None
        boxes = None
        if check.grounded:
            grounded = parse_tokens(tokens, probs, tok)
            raw, text = grounded.text, plain_text(grounded.text)
            boxes = grounded.to_detections(size, default_score=confidence or 0.0) if grounded.n_boxes else None
        else:
            raw = text = tok.decode(tokens, skip_special_tokens=True)
        raw, text = storable(raw), storable(text)
        parsed = parse_answer(check.kind, text, check.choices)
        return CheckAnswer(check, parsed.status, raw, parsed.value, confidence, parsed.reason, check.with_previous,
                           boxes)


def generate_rows(model: Any, processor: Any, rows: Sequence[tuple[str, Sequence[Image.Image]]],
                  config: Any) -> Any:
    """Greedy answers to ``rows`` (user turn with ``<image>`` placeholders, its images), one batch. Each distinct
    image object is encoded once -- one vision-tower call for all of them -- and its embeddings are reused in
    every row that shows it (``generate_many`` is the case of one image per row). Returns ``GenerationOutput``."""
    import torch

    from model.vl2.generation import generate

    batch = processor([p for p, _ in rows], [list(imgs) for _, imgs in rows])
    crops = batch.images_spatial_crop.tolist()  # [rows][images] (width tiles, height tiles)
    first: dict[int, tuple[int, int, int, int]] = {}  # id(image) -> (row, first tile, width tiles, height tiles)
    for r, (_, imgs) in enumerate(rows):
        t = 0
        for j, im in enumerate(imgs):
            w, h = crops[r][j]
            first.setdefault(id(im), (r, t, w, h))
            t += 1 + w * h
    n_max = max(1 + w * h for _, _, w, h in first.values())
    tiles = batch.images.new_zeros(len(first), n_max, *batch.images.shape[2:])  # [distinct, n_max, 3, S, S]
    spatial = torch.zeros(len(first), 1, 2, dtype=torch.long)  # [distinct, 1, 2]
    for k, (r, t, w, h) in enumerate(first.values()):
        tiles[k, :1 + w * h] = batch.images[r, t:t + 1 + w * h]
        spatial[k, 0] = torch.tensor([w, h])
    embeds = model.image_embeddings(tiles.to(model.image_newline.device), spatial)  # per distinct image [N_k, D]
    index = {key: k for k, key in enumerate(first)}
    per_row = [torch.cat([embeds[index[id(im)]] for im in imgs]) for _, imgs in rows]
    return generate(model, replace(batch, images=None), config, image_embeds=per_row)


def build_ask_analyzer(name: str, options: dict[str, Any]) -> VL2AskAnalyzer:
    """Registry entry for ``vl2-ask``: the options of every VL2 analyzer plus the profile's ``checks``."""
    vl2, _, checks = vl2_options(name, options)
    return VL2AskAnalyzer(vl2, [c if isinstance(c, Check) else Check.from_dict(c) for c in checks])
