"""Strict answer parsing (model.vl2.answers): recorded answers table by table, and property tests on generated
strings -- every string gives a typed value of its kind or ``unparsed`` with its raw text; nothing is evaluated."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from model.vl2.answers import AnswerParseError, Expectation, parse_answer, parse_value

# Answers of the kind vision-language models give (DeepSeek-VL2 and its peers answer short questions in these
# forms), with what each must parse to; None = unparsed.
YES_NO = [
    ("Yes.", True), ("yes", True), ("YES!", True), ("Yes, the fire exit is blocked by a pallet.", True),
    ("No.", False), ("no, it is not", False), ("No it isn't.", False), ("  No, nothing blocks it.", False),
    ("**Yes**", True), ("No; the door is clear.", False), ("Yes - a pallet.", True),
    ("Not sure.", None), ("Yes and no.", None), ("Nope.", None), ("It is blocked.", None), ("", None),
    ("Yesterday the exit was clear", None), ("The answer is yes.", None), ("No or yes", None),
]
NUMBERS = [
    ("3", 3), ("There are 3 pallets on the dock.", 3), ("Three.", 3), ("I can see twelve pallets.", 12),
    ("twenty-one", 21), ("Twenty one pallets", 21), ("There are no pallets on the dock.", 0), ("None.", 0),
    ("zero", 0), ("No one is there.", 0), ("Nobody", 0), ("1,200 boxes", 1200), ("2.5", 2.5),
    ("one hundred and five", 105), ("a hundred", 100), ("3 (three)", 3), ("No, there are 2.", 2),
    ("-4", -4), ("ninety-nine", 99), ("seven hundred", 700), ("There are 14 pallets.", 14),
    ("3 or 4", None), ("between 2 and 5", None), ("There are 3 pallets and 2 forklifts.", None),
    ("many", None), ("No.", None), ("", None), ("the 3rd", None), ("x2", None), ("3*4", None),
    ("twenty twelve", None), ("9" * 20, None),
]
CHOICES = ("open", "closed")
CHOICE = [
    ("Open.", "open"), ("The door is open.", "open"), ("closed", "closed"), ("It appears to be CLOSED.", "closed"),
    ("Open or closed", None), ("It is not open.", None), ("The door isn't open", None), ("opened", None),
    ("ajar", None), ("", None), ("Neither open nor closed", None),
]


@pytest.mark.parametrize(("raw", "want"), YES_NO)
def test_yes_no(raw: str, want: bool | None) -> None:
    _check("yes_no", raw, want)


@pytest.mark.parametrize(("raw", "want"), NUMBERS)
def test_number(raw: str, want: float | None) -> None:
    _check("number", raw, want)


@pytest.mark.parametrize(("raw", "want"), CHOICE)
def test_choice(raw: str, want: str | None) -> None:
    _check("choice", raw, want, CHOICES)


def test_choice_longest_match_wins_and_keeps_configured_spelling() -> None:
    assert parse_answer("choice", "It is half open", ("Open", "Half open", "Closed")).value == "Half open"
    assert parse_answer("choice", "It is open", ("Open", "Half open", "Closed")).value == "Open"


def test_text_keeps_the_answer() -> None:
    assert parse_answer("text", "  A pallet blocks the exit.\n").value == "A pallet blocks the exit."
    assert parse_answer("text", " \n ").status == "unparsed"


def _check(kind: str, raw: str, want: object, choices: tuple[str, ...] = ()) -> None:
    got = parse_answer(kind, raw, choices)
    assert got.raw == raw
    if want is None:
        assert (got.status, got.value) == ("unparsed", None) and got.reason
        with pytest.raises(AnswerParseError) as err:
            parse_value(kind, raw, choices)
        assert err.value.raw == raw and err.value.kind == kind
    else:
        assert (got.status, got.value, type(got.value)) == ("ok", want, type(want))


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown answer kind 'count'"):
        parse_answer("count", "3")


# ---- properties ------------------------------------------------------------------------------------------
_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
        "seventeen eighteen nineteen".split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def in_words(n: int, hyphen: bool = True) -> str:
    """0..999 in English words, written independently of the parser."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        t, u = divmod(n, 10)
        return _TENS[t - 2] + (("-" if hyphen else " ") + _ONES[u] if u else "")
    h, rest = divmod(n, 100)
    return f"{_ONES[h]} hundred" + (f" and {in_words(rest, hyphen)}" if rest else "")


TEMPLATES = ["{}", "{}.", "There are {} pallets on the dock.", "I count {} of them", "{} pallets", "Answer: {}"]
CHOICE_WORDS = st.lists(st.sampled_from(["open", "closed", "ajar", "locked", "red", "green", "blue", "full",
                                         "empty", "half full", "blocked"]), min_size=2, max_size=5, unique=True)


@given(st.text(max_size=200), st.sampled_from(["yes_no", "number", "choice", "text"]))
@settings(max_examples=400, deadline=None)
def test_every_string_is_a_typed_value_or_unparsed(raw: str, kind: str) -> None:
    got = parse_answer(kind, raw, CHOICES)
    assert got.raw == raw and got.kind == kind
    if got.status == "unparsed":
        assert got.value is None and got.reason
        return
    assert got.status == "ok"
    if kind == "yes_no":
        assert isinstance(got.value, bool)
    elif kind == "number":
        assert isinstance(got.value, (int, float)) and not isinstance(got.value, bool) and math.isfinite(got.value)
    elif kind == "choice":
        assert got.value in CHOICES
    else:
        assert isinstance(got.value, str) and got.value == raw.strip()


@given(st.integers(0, 999), st.sampled_from(TEMPLATES), st.booleans(), st.booleans(), st.booleans())
@settings(max_examples=300, deadline=None)
def test_numbers_in_digits_and_words(n: int, template: str, words: bool, hyphen: bool, upper: bool) -> None:
    said = in_words(n, hyphen) if words else str(n)
    text = template.format(said.capitalize() if upper else said)
    assert parse_answer("number", text).value == n


@given(st.integers(0, 999), st.integers(0, 999))
def test_two_different_numbers_never_parse(a: int, b: int) -> None:
    text = f"Either {a} or {in_words(b)}."
    assert parse_answer("number", text).status == ("ok" if a == b else "unparsed")


@given(st.booleans(), st.sampled_from(["", ".", "!", ", it is.", " it is not.", ", definitely", ". A pallet."]),
       st.sampled_from([str.lower, str.upper, str.capitalize]), st.sampled_from(["", " ", "\n"]))
def test_yes_no_variants(yes: bool, tail: str, case, lead: str) -> None:  # noqa: ANN001
    text = lead + case("yes" if yes else "no") + tail
    assert parse_answer("yes_no", text).value is yes


@given(CHOICE_WORDS, st.data())
def test_choice_named_once_parses_and_two_do_not(choices: list[str], data: st.DataObject) -> None:
    pick = data.draw(st.sampled_from(choices))
    other = data.draw(st.sampled_from([c for c in choices if c != pick]))
    template = data.draw(st.sampled_from(["{}", "It is {}.", "The door looks {} to me", "{}!"]))
    text = template.format(data.draw(st.sampled_from([pick, pick.upper(), pick.title()])))
    got = parse_answer("choice", text, choices)
    overlap = any(c != pick and c in pick.split() for c in choices)  # "half full" also says "full"
    assert got.value == pick or (overlap and got.status == "ok")
    assert parse_answer("choice", f"{pick} or {other}", choices).status == "unparsed"


@pytest.mark.parametrize(("raw", "number"), [("__import__('os').system('true')", None), ("2 + 2", 2),
                                             ("3*4", None), ("1e3", None), ("[[1, 2]]", None), ("True", None),
                                             ("{'a': 1}", 1)])
def test_nothing_is_evaluated(raw: str, number: int | None) -> None:
    """Expressions stay text: nothing computes 2 + 2 (it names 2, twice) or 3*4, or reads Python literals."""
    assert parse_answer("number", raw).value == number
    assert parse_answer("yes_no", raw).status == "unparsed"


def test_expectations() -> None:
    assert Expectation(equals=False).holds(False) and not Expectation(equals=False).holds(True)
    assert Expectation(max=12).holds(12) and not Expectation(max=12).holds(13)
    assert Expectation(min=1, max=3).holds(2.5) and not Expectation(min=1).holds(0)
    assert Expectation(equals="closed").holds("Closed") and not Expectation(equals="closed").holds("open")
    assert not Expectation(max=3).holds(True)  # a bool is not a number here
    assert Expectation(min=1, max=3).as_dict() == {"min": 1, "max": 3}
    assert Expectation(equals="open").as_dict() == {"equals": "open"}
