"""Prompt builders for what ``vl2-ask`` and ``vl2-ground`` ask DeepSeek-VL2 (the user turn; the processor wraps it
in the official ``deepseek`` template).

- A check: ``<image>\\n{question} {instruction}``; the instruction names the answer form the strict parser
  (``model.vl2.answers``) reads: ``Answer yes or no.``, ``Answer with a number.``,
  ``Answer with one of: open, closed.``; free text has none.
- A grounded description: ``<image>\\n<|grounding|>{question}``, VL2's grounded-conversation mode (the answer's
  phrases carry ``<|ref|>..<|/ref|><|det|>[[...]]<|/det|>`` boxes).
- Find-all grounding: ``<image>\\nFind all the <|ref|>{phrase}<|/ref|>.``, the official demo's form that returns
  every instance in one box list (the referring form ``<|ref|>{phrase}<|/ref|>.`` is trained to pick one object).
- Two images (``with_previous``): the README's interleaved form, previous image first,
  ``This is the previous image: <image>\\nThis is the current image: <image>\\n{question} {instruction}``; with
  ``<|grounding|>`` before the question when grounded (boxes then refer to the last image, the current one).

Questions and choices are site text from the YAML file: markup tokens in them are refused, so an answer's boxes
and image slots only ever come from the template.
"""

from __future__ import annotations

from typing import Sequence

from model.vl2.grounding import GROUNDING, find_all_prompt, grounded_conversation_prompt

__all__ = ["check_prompt", "find_all_prompt", "grounded_conversation_prompt", "instruction", "two_image_prompt"]

PREVIOUS, CURRENT = "This is the previous image: <image>\n", "This is the current image: <image>\n"
_MARKUP = ("<|", "|>", "<image>", "<｜")


def _clean(text: str, what: str) -> str:
    t = " ".join(text.split())
    if not t:
        raise ValueError(f"empty {what}")
    if any(m in t for m in _MARKUP):
        raise ValueError(f"{what} must not contain markup tokens: {text!r}")
    return t


def instruction(kind: str, choices: Sequence[str] = ()) -> str:
    """The sentence after a question that names the expected answer form ("" for free text)."""
    if kind == "yes_no":
        return "Answer yes or no."
    if kind == "number":
        return "Answer with a number."
    if kind == "choice":
        if len(choices) < 2:
            raise ValueError("a choice question needs at least two choices")
        return "Answer with one of: " + ", ".join(_clean(c, "choice") for c in choices) + "."
    if kind == "text":
        return ""
    raise ValueError(f"unknown answer kind {kind!r}")


def check_prompt(question: str, kind: str, choices: Sequence[str] = (), grounded: bool = False,
                 with_previous: bool = False) -> str:
    """The user turn of one check about one image, or about the previous and the current image."""
    q = _clean(question, "question")
    ask = " ".join(p for p in (q, instruction(kind, choices)) if p)
    if not with_previous:
        return grounded_conversation_prompt(ask) if grounded else f"<image>\n{ask}"
    return two_image_prompt(ask, grounded)


def two_image_prompt(question: str, grounded: bool = False) -> str:
    """The previous image, then the current one, then the question (``<|grounding|>`` first when grounded)."""
    q = _clean(question, "question")
    return PREVIOUS + CURRENT + (GROUNDING if grounded else "") + q
