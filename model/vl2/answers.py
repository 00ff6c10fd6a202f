"""Strict parsing of a check's answer into its kind, and expectations on the parsed value. Pure functions; nothing
is ever evaluated, and nothing is guessed: text that does not say one thing of the kind is ``unparsed``.

Kinds and what parses (case-insensitive; the answer's raw text is always kept):
- ``yes_no``: the first word of the first clause (up to ``, . ; : ! ?`` or a line end) is ``yes`` or ``no``,
  and that clause does not also say the other (``Yes.``, ``no, it is not``, ``No it isn't`` parse;
  ``Not sure``, ``Yes and no``, ``Nope`` do not). Value: ``True`` / ``False``.
- ``number``: exactly one number is mentioned, in digits (``12``, ``1,200``, ``2.5``, ``-3``) or in words up to
  999 (``three``, ``twelve``, ``twenty-one``, ``one hundred and five``); ``none``, ``zero``, ``nobody``,
  ``no one`` and ``no`` before a word (``no pallets``) mean 0. The same number said twice (``3 (three)``)
  counts once; two different numbers (``3 or 4``, ``between 2 and 5``) do not parse. Value: ``int`` when whole,
  else ``float``.
- ``choice``: exactly one of the configured choices appears as whole words (longest choice first, so
  ``half open`` is not also ``open``), not negated (``not``, ``no``, ``never``, ``n't`` just before it).
  Value: the choice as configured.
- ``text``: any non-empty answer. Value: the stripped text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence, Union

KINDS = ("yes_no", "number", "choice", "text")
Value = Union[bool, int, float, str]


class AnswerParseError(ValueError):
    """An answer that does not say one value of its kind; carries the kind, the raw text and the reason."""

    def __init__(self, kind: str, raw: str, reason: str) -> None:
        super().__init__(f"{kind} answer not parsed: {reason}: {raw[:80]!r}")
        self.kind, self.raw, self.reason = kind, raw, reason


@dataclass(frozen=True)
class ParsedAnswer:
    """``status`` is ``ok`` (``value`` holds the typed value) or ``unparsed`` (``value`` is None, ``reason``
    says why); ``raw`` is the text given, unchanged."""

    kind: str
    status: str
    value: Value | None
    raw: str
    reason: str | None = None


def parse_answer(kind: str, raw: str, choices: Sequence[str] = ()) -> ParsedAnswer:
    """``raw`` as a value of ``kind``; never raises for any string (an unknown kind is a ``ValueError``)."""
    try:
        return ParsedAnswer(kind, "ok", parse_value(kind, raw, choices), raw)
    except AnswerParseError as e:
        return ParsedAnswer(kind, "unparsed", None, raw, e.reason)


def parse_value(kind: str, raw: str, choices: Sequence[str] = ()) -> Value:
    """The typed value of ``raw``; ``AnswerParseError`` when it does not say one value of ``kind``."""
    if kind == "yes_no":
        return _yes_no(raw)
    if kind == "number":
        return _number(raw)
    if kind == "choice":
        return _choice(raw, choices)
    if kind == "text":
        text = raw.strip()
        if not text:
            raise AnswerParseError(kind, raw, "empty answer")
        return text
    raise ValueError(f"unknown answer kind {kind!r} (known: {', '.join(KINDS)})")


# ---- yes / no --------------------------------------------------------------------------------------------
_CLAUSE_END = re.compile(r"[,.;:!?\n]")
_WORD = re.compile(r"[a-z]+")


def _yes_no(raw: str) -> bool:
    clause = _CLAUSE_END.split(raw.strip().lower(), maxsplit=1)[0]
    words = _WORD.findall(clause)
    if not words or words[0] not in ("yes", "no"):
        raise AnswerParseError("yes_no", raw, "does not start with yes or no")
    other = "no" if words[0] == "yes" else "yes"
    if other in words[1:]:
        raise AnswerParseError("yes_no", raw, "says both yes and no")
    return words[0] == "yes"


# ---- numbers ---------------------------------------------------------------------------------------------
_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_ZERO_WORDS = ("none", "nobody", "nothing")
# numbers in digits not glued to letters ("3rd", "x2" are not counts), words, any other single character
_TOKEN = re.compile(r"(?P<num>(?<![a-z\d.,])-?\d+(?:,\d{3})*(?:\.\d+)?(?![a-z\d]))|(?P<word>[a-z]+)|(?P<other>\S)")


def _below_100(toks: list[str], i: int) -> tuple[int, int] | None:
    """A number 0..99 in words at ``toks[i]``: (value, next index), or None."""
    w = toks[i] if i < len(toks) else ""
    if w in _UNITS:
        return _UNITS[w], i + 1
    if w not in _TENS:
        return None
    if i + 2 < len(toks) and toks[i + 1] == "-" and 1 <= _UNITS.get(toks[i + 2], 0) <= 9:
        return _TENS[w] + _UNITS[toks[i + 2]], i + 3  # "twenty-one"
    if i + 1 < len(toks) and 1 <= _UNITS.get(toks[i + 1], 0) <= 9:
        return _TENS[w] + _UNITS[toks[i + 1]], i + 2  # "twenty one"
    return _TENS[w], i + 1


def _words_number(toks: list[str], i: int) -> tuple[int, int] | None:
    """A number 0..999 in words at ``toks[i]`` ("one hundred and five", "a hundred"): (value, next index)."""
    small = _below_100(toks, i)
    lead, j = (1, i + 1) if toks[i] == "a" else (small if small else (None, i))
    if lead is not None and 1 <= lead <= 9 and j < len(toks) and toks[j] == "hundred":
        k = j + 2 if j + 1 < len(toks) and toks[j + 1] == "and" else j + 1
        rest = _below_100(toks, k)
        if rest is not None and rest[0] > 0:
            return lead * 100 + rest[0], rest[1]
        return lead * 100, j + 1
    return small


def _number(raw: str) -> int | float:
    matches = list(_TOKEN.finditer(raw.lower().replace("\u2019", "'")))
    toks = [m.group(0) for m in matches]
    found: list[float] = []
    i = 0
    while i < len(toks):
        t, nxt = toks[i], toks[i + 1] if i + 1 < len(toks) else ""
        if matches[i].lastgroup == "num":
            found.append(float(t.replace(",", "")))
            i += 1
        elif t == "no" and nxt == "one":
            found.append(0.0)  # "no one"
            i += 2
        elif t in _ZERO_WORDS or (t == "no" and nxt.isalpha()):
            found.append(0.0)  # "none", "no pallets" (not "No, there are 3")
            i += 1
        else:
            hit = _words_number(toks, i)
            found += [float(hit[0])] if hit else []
            i = hit[1] if hit else i + 1
    values = sorted(set(found))
    if not values:
        raise AnswerParseError("number", raw, "no number in the answer")
    if len(values) > 1:
        shown = ", ".join(f"{v:g}" for v in values)
        raise AnswerParseError("number", raw, f"several numbers ({shown})")
    v = values[0]
    if not abs(v) < 1e15:  # beyond what a count or measure can be (and what JSON and SQL floats keep exactly)
        raise AnswerParseError("number", raw, "number out of range")
    return int(v) if v.is_integer() else v


# ---- choices ---------------------------------------------------------------------------------------------
_NEGATIONS = ("not", "no", "never", "neither", "nor", "t")  # "t": the end of "isn't" once split into words


def _norm_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower().replace("\u2019", "'"))


def _choice(raw: str, choices: Sequence[str]) -> str:
    if len(choices) < 2:
        raise ValueError("a choice answer needs at least two choices")
    words = _norm_words(raw)
    taken = [False] * len(words)
    matched: set[str] = set()
    for choice in sorted(choices, key=lambda c: (-len(_norm_words(c)), c)):
        cw = _norm_words(choice)
        n = len(cw)
        if not n:
            raise ValueError(f"choice {choice!r} has no letters or digits")
        for s in range(len(words) - n + 1):
            if words[s:s + n] != cw or any(taken[s:s + n]):
                continue
            if s > 0 and words[s - 1] in _NEGATIONS:
                raise AnswerParseError("choice", raw, f"{choice!r} is negated")
            taken[s:s + n] = [True] * n
            matched.add(choice)
    if not matched:
        raise AnswerParseError("choice", raw, "none of the choices")
    if len(matched) > 1:
        raise AnswerParseError("choice", raw, "several choices (" + ", ".join(sorted(matched)) + ")")
    return matched.pop()


# ---- expectations ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expectation:
    """What a check expects: ``equals`` (yes/no as a bool, a choice, a number) or a closed range ``min..max``
    for numbers (either bound may be absent)."""

    equals: Value | None = None
    min: float | None = None
    max: float | None = None

    def holds(self, value: Value) -> bool:
        if self.equals is not None:
            if isinstance(self.equals, str) and isinstance(value, str):
                return self.equals.lower() == value.lower()
            return value == self.equals
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def as_dict(self) -> dict[str, Any]:
        """The stored form: ``{"equals": ...}`` or ``{"min": ..., "max": ...}`` (absent bounds left out)."""
        if self.equals is not None:
            return {"equals": self.equals}
        return {k: v for k, v in (("min", self.min), ("max", self.max)) if v is not None}
