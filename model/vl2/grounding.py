"""DeepSeek-VL2 grounding: prompt builders and a strict parser for answers of the form
``<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>`` (corners are integers on a 0..999 grid of the
original image). Nothing here ever evaluates model output.

``parse_answer(text)`` never raises: it returns every ``<|det|>`` span in order (``GroundedRef``; phrase from the
``<|ref|>`` just before it, "" when there is none), the boxes that passed validation (corners ordered), an overall
``status`` and the ``issues`` with the offending text. Statuses: ``ok``, ``no_grounding`` (no markup at all),
``malformed`` (not ``[[a, b, c, d], ...]``: stray text, non-integers, digits other than ASCII 0-9),
``wrong_arity`` (a box without 4 numbers), ``out_of_range`` (a value outside 0..999), ``zero_area`` (a box of no
width or no height: it marks nothing), ``unpaired`` (a ref without a det span, or a det without a ref),
``truncated`` (the text stops inside a ref or det span; complete boxes before the cut are kept).

``parse_grounding(text)`` is the list-returning form the analyzer uses; it raises ``GroundingParseError`` only
when the answer has grounding markup and problems but not a single usable box.

Per-box confidence (``parse_tokens``): the mean probability of the generated tokens that overlap the box's own
``[...]`` text (digits, commas, spaces, brackets of that box). When the token text of a det span cannot be
aligned with the decoded text (non-ASCII content, markup produced as plain tokens), each box of that span gets the
mean over the span's tokens; when even the spans cannot be aligned, the mean over the whole answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from model.detections import GRID_MAX, Detections

REF_OPEN, REF_CLOSE, DET_OPEN, DET_CLOSE = "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>"
GROUNDING = "<|grounding|>"
_MARKUP = ("<|", "|>", "<image>")
STATUSES = ("ok", "no_grounding", "malformed", "wrong_arity", "out_of_range", "zero_area", "unpaired", "truncated")

OCR_PROMPT = "<image>\n<|grounding|>Read all the text in the image."
_MARKER = re.compile(r"<\|/?(?:ref|det)\|>")
_BOX = re.compile(r"\[([^\[\]]*)\]")  # one innermost [...] group
_INT = re.compile(r"\s*(-?[0-9]{1,9})\s*", re.ASCII)  # ASCII digits only: int() would also read "１２"


class GroundingParseError(ValueError):
    """An answer with grounding markup from which no usable box could be read; ``result`` has the details."""

    def __init__(self, result: "GroundingParse") -> None:
        first = result.issues[0] if result.issues else ("?", "")
        super().__init__(f"grounding answer not usable: {first[0]}: {first[1][:80]!r}")
        self.result = result


# ---- prompts ---------------------------------------------------------------------------------------------
def _check_phrase(phrase: str) -> str:
    p = phrase.strip()
    if not p:
        raise ValueError("empty grounding phrase")
    if any(m in p for m in _MARKUP):
        raise ValueError(f"grounding phrase must not contain markup: {phrase!r}")
    return p


def referring_prompt(phrase: str) -> str:
    """The README's referring-expression prompt: one box (or a few) for ``phrase`` in the image."""
    return f"<image>\n{REF_OPEN}{_check_phrase(phrase)}{REF_CLOSE}."


def find_all_prompt(phrase: str) -> str:
    """The demo's "find all" form: every instance of ``phrase``."""
    return f"<image>\nFind all the {REF_OPEN}{_check_phrase(phrase)}{REF_CLOSE}."


def grounded_conversation_prompt(question: str) -> str:
    """Grounded conversation: the answer interleaves prose with ref/det pairs."""
    q = question.strip()
    if not q or "<image>" in q:
        raise ValueError(f"bad grounded question: {question!r}")
    return f"<image>\n{GROUNDING}{q}"


def ocr_prompt() -> str:
    """Reading prompt; with ``<|grounding|>`` the model may box each line (label = the line's text)."""
    return OCR_PROMPT


# ---- results ---------------------------------------------------------------------------------------------
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class GroundedRef:
    """One ``<|det|>`` span: its phrase, the valid boxes (x1 <= x2, y1 <= y2 on the 0..999 grid), their
    character ranges in the answer (for confidences) and this span's status."""

    phrase: str
    boxes: tuple[Box, ...]
    status: str = "ok"
    spans: tuple[tuple[int, int], ...] = ()  # per box: [start, end) of its "[...]" in the answer text
    det_span: tuple[int, int] = (0, 0)  # [start, end) of the det body in the answer text
    scores: tuple[float, ...] | None = None  # per box, filled by parse_tokens


@dataclass(frozen=True)
class GroundingParse:
    text: str
    refs: tuple[GroundedRef, ...]
    status: str  # "ok", "no_grounding", or the first issue's status
    issues: tuple[tuple[str, str], ...] = field(default=())  # (status, offending text)

    @property
    def n_boxes(self) -> int:
        return sum(len(r.boxes) for r in self.refs)

    def to_detections(self, image_size: tuple[int, int], label: str | None = None,
                      default_score: float | None = None) -> Detections:
        """Every valid box as ``Detections`` (kind "objects"); label = ``label`` or the ref's phrase."""
        labels, boxes, scores, phrases = [], [], [], []
        for ref in self.refs:
            for i, box in enumerate(ref.boxes):
                labels.append(label if label is not None else ref.phrase)
                boxes.append(box)
                phrases.append(ref.phrase)
                scores.append(ref.scores[i] if ref.scores is not None else default_score)
        use_scores = None if any(s is None for s in scores) else scores
        return Detections.from_grid_boxes(image_size, labels, boxes, use_scores, {"phrase": phrases})


# ---- parsing ---------------------------------------------------------------------------------------------
def _parse_det_body(body: str, offset: int, truncated: bool) -> tuple[list[Box], list[tuple[int, int]],
                                                                       list[tuple[str, str]]]:
    """Boxes of one det body (``[[...], ...]``), their absolute char spans and the issues found."""
    boxes: list[Box] = []
    spans: list[tuple[int, int]] = []
    issues: list[tuple[str, str]] = []
    stripped = body.strip()
    lead = len(body) - len(body.lstrip())
    if not stripped.startswith("["):
        issues.append(("malformed", body))
        if not truncated:
            return boxes, spans, issues
    pos = lead + 1 if stripped.startswith("[") else 0  # inside the outer list
    last_close = body.rfind("]")  # found once: asking "is there a ']' ahead?" per character would be quadratic
    expect_box = True
    while pos < len(body):
        m = _BOX.match(body, pos) if body[pos] == "[" else None
        ch = body[pos]
        if m is not None and expect_box:
            raw = m.group(1)
            parts = raw.split(",")
            ints = [_INT.fullmatch(p) for p in parts]
            text = m.group(0)
            if any(x is None for x in ints):
                issues.append(("malformed", text))
            elif len(parts) != 4:
                issues.append(("wrong_arity", text))
            else:
                vals = [int(x.group(1)) for x in ints if x is not None]
                x1, y1, x2, y2 = vals
                if any(v < 0 or v > GRID_MAX for v in vals):
                    issues.append(("out_of_range", text))
                elif x1 == x2 or y1 == y2:
                    issues.append(("zero_area", text))
                else:
                    boxes.append((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))
                    spans.append((offset + m.start(), offset + m.end()))
            pos = m.end()
            expect_box = False
        elif ch.isspace():
            pos += 1
        elif ch == "," and not expect_box:
            pos += 1
            expect_box = True
        elif ch == "]" and not expect_box:  # end of the outer list
            rest = body[pos + 1:]
            if rest.strip():
                issues.append(("malformed", rest))
            return boxes, spans, issues
        else:
            if truncated and pos > last_close:
                return boxes, spans, issues  # an unfinished box at the cut: the caller reports truncation
            nxt = body.find("[", pos + 1)
            end = len(body) if nxt < 0 else nxt
            issues.append(("malformed", body[pos:end]))
            pos, expect_box = end, True
    if not truncated:
        issues.append(("malformed", body))  # the outer list never closed
    return boxes, spans, issues


def parse_answer(text: str) -> GroundingParse:
    """Every det span of ``text`` with its phrase and valid boxes; never raises (see the module doc)."""
    refs: list[GroundedRef] = []
    issues: list[tuple[str, str]] = []
    markers = list(_MARKER.finditer(text))
    if not markers:
        return GroundingParse(text, (), "no_grounding")
    i = 0
    phrase: str | None = None  # a closed ref waiting for its det span
    while i < len(markers):
        m = markers[i]
        tag = m.group(0)
        if tag == REF_OPEN:
            if phrase is not None:
                issues.append(("unpaired", REF_OPEN + phrase + REF_CLOSE))
            if i + 1 >= len(markers) or markers[i + 1].group(0) != REF_CLOSE:
                end = markers[i + 1].start() if i + 1 < len(markers) else len(text)
                issues.append(("truncated" if i + 1 >= len(markers) else "malformed", text[m.start():end]))
                phrase = None
                i += 1
                continue
            phrase = text[m.end():markers[i + 1].start()].strip()
            i += 2
        elif tag == DET_OPEN:
            close = markers[i + 1] if i + 1 < len(markers) else None
            truncated = close is None
            if close is not None and close.group(0) != DET_CLOSE:
                issues.append(("malformed", text[m.start():close.start()]))
                i += 1
                phrase = None
                continue
            body_end = len(text) if close is None else close.start()
            boxes, spans, found = _parse_det_body(text[m.end():body_end], m.end(), truncated)
            issues += found
            if truncated:
                issues.append(("truncated", text[m.start():]))
            if phrase is None:
                issues.append(("unpaired", text[m.start():body_end + (0 if close is None else len(DET_CLOSE))]))
            status = found[0][0] if found else ("truncated" if truncated else ("ok" if phrase is not None
                                                                                else "unpaired"))
            refs.append(GroundedRef(phrase or "", tuple(boxes), status, tuple(spans), (m.end(), body_end)))
            phrase = None
            i += 1 if close is None else 2
        else:  # a closing marker with no opener
            issues.append(("malformed", tag))
            i += 1
    if phrase is not None:
        issues.append(("unpaired", REF_OPEN + phrase + REF_CLOSE))
    return GroundingParse(text, tuple(refs), issues[0][0] if issues else "ok", tuple(issues))


_DET_SPAN = re.compile(r"<\|det\|>.*?(?:<\|/det\|>|$)", re.S)
_TAGS = re.compile(r"<\|/?ref\|>|<\|grounding\|>|<\|/det\|>")


def plain_text(text: str) -> str:
    """A grounded answer as prose: det spans (an unclosed last one too) removed, ref markers dropped, the ref
    phrases kept in place, whitespace runs collapsed."""
    return " ".join(_TAGS.sub("", _DET_SPAN.sub(" ", text)).split())


def parse_grounding(text: str) -> list[GroundedRef]:
    """The det spans of an answer (see ``parse_answer``). Plain text gives ``[]``; an answer with markup and
    problems but no usable box raises ``GroundingParseError``."""
    result = parse_answer(text)
    if result.status not in ("ok", "no_grounding") and result.n_boxes == 0:
        raise GroundingParseError(result)
    return list(result.refs)


def _token_det_spans(tokens: Sequence[int], tokenizer: Any) -> list[tuple[int, int]] | None:
    """[start, end) token index ranges of the bodies between ``<|det|>`` and ``<|/det|>`` special tokens (an
    unclosed last one runs to the end); None when the tokenizer cannot name those ids."""
    try:
        open_id, close_id = tokenizer.token_id(DET_OPEN), tokenizer.token_id(DET_CLOSE)
    except (AttributeError, KeyError, ValueError):
        return None
    spans, start = [], None
    for i, t in enumerate(tokens):
        if t == open_id:
            start = i + 1
        elif t == close_id and start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, len(tokens)))
    return spans


def parse_tokens(tokens: Sequence[int], probs: Sequence[float], tokenizer: Any) -> GroundingParse:
    """``parse_answer`` of the decoded tokens, with per-box ``scores`` from the chosen-token probabilities."""
    tokens, probs = list(tokens), list(probs)
    text = tokenizer.decode(tokens)
    result = parse_answer(text)
    if not result.refs:
        return result
    overall = sum(probs) / len(probs) if probs else 0.0

    def box_scores(toks: list[int], prs: list[float], body_start: int, ref: GroundedRef) -> list[float] | None:
        """Per-box means when the tokens' own texts concatenate to ``text[body_start:...]``; else None."""
        pieces = [tokenizer.decode([t]) for t in toks]
        joined = "".join(pieces)
        if text[body_start:body_start + len(joined)] != joined:
            return None
        starts, pos = [], body_start
        for piece in pieces:
            starts.append(pos)
            pos += len(piece)
        out = []
        for lo, hi in ref.spans:
            vals = [pr for st, piece, pr in zip(starts, pieces, prs) if st < hi and st + len(piece) > lo]
            if not vals:
                return None
            out.append(sum(vals) / len(vals))
        return out

    spans = _token_det_spans(tokens, tokenizer)
    whole = box_scores(tokens, probs, 0, result.refs[0]) is not None if not spans else False
    refs = []
    for k, ref in enumerate(result.refs):
        scores: list[float] | None = None
        if whole:  # the whole answer aligns token by token
            scores = box_scores(tokens, probs, 0, ref)
        elif spans is not None and len(spans) == len(result.refs):
            lo, hi = spans[k]
            scores = box_scores(tokens[lo:hi], probs[lo:hi], ref.det_span[0], ref)
            if scores is None:  # this span's token texts do not line up with the text: its mean
                span_probs = probs[lo:hi]
                mean = sum(span_probs) / len(span_probs) if span_probs else overall
                scores = [mean] * len(ref.boxes)
        if scores is None:
            scores = [overall] * len(ref.boxes)
        refs.append(GroundedRef(ref.phrase, ref.boxes, ref.status, ref.spans, ref.det_span,
                                tuple(min(1.0, max(0.0, x)) for x in scores)))
    return GroundingParse(result.text, tuple(refs), result.status, result.issues)
