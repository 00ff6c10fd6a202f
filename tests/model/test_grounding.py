"""The strict VL2 grounding parser: table of real and broken answers, properties over generated answers,
prompts, and per-box confidences from token probabilities."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.vl2 import grounding as g
from model.vl2.tokenizer import VL2Tokenizer

DATA = Path(__file__).parent / "data"

CASES = [
    # (answer, status, [(phrase, boxes)])
    ("<|ref|>The giraffe at the back.<|/ref|><|det|>[[580, 270, 999, 900]]<|/det|>", "ok",
     [("The giraffe at the back.", [(580, 270, 999, 900)])]),
    ("<|ref|>slices<|/ref|><|det|>[[1, 2, 3, 4], [0,0,999,999]]<|/det|>", "ok",
     [("slices", [(1, 2, 3, 4), (0, 0, 999, 999)])]),
    ("Put it in the <|ref|>bin<|/ref|><|det|>[[10, 20, 30, 40]]<|/det|> near the <|ref|>door<|/ref|>"
     "<|det|>[[500, 0, 999, 999]]<|/det|>.", "ok", [("bin", [(10, 20, 30, 40)]), ("door", [(500, 0, 999, 999)])]),
    ("<|ref|>a<|/ref|><|det|>[[50, 60, 10, 20]]<|/det|>", "ok", [("a", [(10, 20, 50, 60)])]),  # swapped corners
    ("<|ref|>a<|/ref|>\n<|det|> [ [1,2,3,4] ,[5, 6, 7, 8] ] <|/det|>", "ok", [("a", [(1, 2, 3, 4), (5, 6, 7, 8)])]),
    ("There is nothing to box here.", "no_grounding", []),
    ("", "no_grounding", []),
    ("<|ref|>a<|/ref|><|det|>[[1, 2, 3, 1000]]<|/det|>", "out_of_range", [("a", [])]),
    ("<|ref|>a<|/ref|><|det|>[[-1, 2, 3, 4], [1, 2, 3, 4]]<|/det|>", "out_of_range", [("a", [(1, 2, 3, 4)])]),
    ("<|ref|>a<|/ref|><|det|>[[1, 2, 3]]<|/det|>", "wrong_arity", [("a", [])]),
    ("<|ref|>a<|/ref|><|det|>[[1, 2, 3, 4, 5], [9, 9, 19, 19]]<|/det|>", "wrong_arity", [("a", [(9, 9, 19, 19)])]),
    ("<|ref|>a<|/ref|><|det|>[[1.5, 2, 3, 4]]<|/det|>", "malformed", [("a", [])]),
    ("<|ref|>a<|/ref|><|det|>__import__('os')<|/det|>", "malformed", [("a", [])]),
    ("<|ref|>a<|/ref|><|det|>[[1, 2, 3, 4]] and more<|/det|>", "malformed", [("a", [(1, 2, 3, 4)])]),
    ("<|ref|>a<|/ref|><|det|>[[1, 2, 3, 4] [5, 6, 7, 8]]<|/det|>", "malformed", [("a", [(1, 2, 3, 4)])]),
    ("<|ref|>a<|/ref|><|det|>[[1, 2, 3, 4], [5, 6, 7", "truncated", [("a", [(1, 2, 3, 4)])]),
    ("<|ref|>a<|/ref|><|det|>[[1, 2, 3, 4]", "truncated", [("a", [(1, 2, 3, 4)])]),
    ("<|ref|>the cat on the", "truncated", []),
    ("<|det|>[[1, 2, 3, 4]]<|/det|>", "unpaired", [("", [(1, 2, 3, 4)])]),
    ("<|ref|>lonely<|/ref|> and nothing else", "unpaired", []),
    ("<|/det|>", "malformed", []),
    ("<|ref|>a<|det|>[[1,2,3,4]]<|/det|>", "malformed", [("", [(1, 2, 3, 4)])]),
]


@pytest.mark.parametrize("text, status, want", CASES)
def test_parse_table(text: str, status: str, want: list[tuple[str, list[tuple[int, ...]]]]) -> None:
    r = g.parse_answer(text)
    assert r.status == status, r.issues
    assert [(x.phrase, list(x.boxes)) for x in r.refs] == want
    if status not in ("ok", "no_grounding"):
        assert r.issues and all(s in g.STATUSES for s, _ in r.issues)
        assert any(s == status for s, _ in r.issues)
        assert all(off and off in text for _, off in r.issues)  # the offending text is kept verbatim


def test_parse_grounding_error_only_without_any_box() -> None:
    assert g.parse_grounding("plain text") == []
    assert [r.boxes for r in g.parse_grounding("<|ref|>a<|/ref|><|det|>[[1,2,3,4]] x<|/det|>")] == [((1, 2, 3, 4),)]
    with pytest.raises(g.GroundingParseError) as e:
        g.parse_grounding("<|ref|>a<|/ref|><|det|>[[1,2,3]]<|/det|>")
    assert e.value.result.status == "wrong_arity"


def test_to_detections_pixels() -> None:
    r = g.parse_answer("<|ref|>a<|/ref|><|det|>[[0, 0, 999, 999], [999, 999, 0, 499]]<|/det|>")
    d = r.to_detections((1998, 999))
    assert d.xyxy.tolist() == [[0, 0, 1998, 999], [0, 499, 1998, 999]]
    assert d.labels == ("a", "a") and d.data["phrase"] == ("a", "a") and d.scores is None


def test_prompts() -> None:
    assert g.referring_prompt("The giraffe at the back.") == "<image>\n<|ref|>The giraffe at the back.<|/ref|>."
    assert g.find_all_prompt("Watermelon slices") == "<image>\nFind all the <|ref|>Watermelon slices<|/ref|>."
    assert g.grounded_conversation_prompt("What is here?") == "<image>\n<|grounding|>What is here?"
    assert g.ocr_prompt().startswith("<image>\n<|grounding|>")
    for bad in ("", "  ", "a<|ref|>b", "x<image>", "a|>"):
        with pytest.raises(ValueError):
            g.referring_prompt(bad)


# ---- properties -------------------------------------------------------------------------------------------
coord = st.integers(0, 999)
box = st.tuples(coord, coord, coord, coord).filter(lambda b: b[0] != b[2] and b[1] != b[3])  # zero area: refused
phrase = st.text(st.characters(blacklist_characters="<>|[]", blacklist_categories=("Cs",)), min_size=1,
                 max_size=20).filter(lambda s: s.strip() != "")
sep = st.sampled_from([", ", ",", " , "])


def render(pairs: list[tuple[str, list[tuple[int, int, int, int]]]], s: str) -> str:
    out = ""
    for p, boxes in pairs:
        body = s.join("[" + s.join(str(v) for v in b) + "]" for b in boxes)
        out += f"{g.REF_OPEN}{p}{g.REF_CLOSE}{g.DET_OPEN}[{body}]{g.DET_CLOSE} "
    return out


def ordered(b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))


pairs_st = st.lists(st.tuples(phrase, st.lists(box, min_size=1, max_size=4)), min_size=1, max_size=3)


@settings(max_examples=150, deadline=None)
@given(pairs_st, sep)
def test_roundtrip(pairs: list, s: str) -> None:
    r = g.parse_answer(render(pairs, s))
    assert r.status == "ok", r.issues
    assert [(x.phrase, list(x.boxes)) for x in r.refs] == [(p.strip(), [ordered(b) for b in bs]) for p, bs in pairs]


@settings(max_examples=150, deadline=None)
@given(pairs_st, sep, st.data())
def test_any_prefix_keeps_a_prefix_of_the_boxes(pairs: list, s: str, data: st.DataObject) -> None:
    text = render(pairs, s)
    cut = data.draw(st.integers(0, len(text)))
    r = g.parse_answer(text[:cut])
    got = [b for x in r.refs for b in x.boxes]
    full = [ordered(b) for _, bs in pairs for b in bs]
    assert got == full[:len(got)]
    assert r.status in g.STATUSES


noise = st.lists(st.one_of(st.sampled_from(["<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "[", "]", ",", " ",
                                            "[[", "]]", "-", "1000", "12", "999", "0"]),
                           st.text(max_size=5)), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(noise)
def test_never_raises_and_only_valid_boxes(text: str) -> None:
    r = g.parse_answer(text)
    assert r.status in g.STATUSES
    for ref in r.refs:
        for b in ref.boxes:
            assert all(0 <= v <= 999 for v in b) and b[0] <= b[2] and b[1] <= b[3]
    r.to_detections((640, 480))  # always constructible
    try:
        g.parse_grounding(text)
    except g.GroundingParseError:
        assert r.n_boxes == 0


# ---- confidences ------------------------------------------------------------------------------------------
def test_per_box_scores_from_token_probabilities() -> None:
    tok = VL2Tokenizer.from_dir(DATA / "tokenizer")
    text = "<|ref|>car<|/ref|><|det|>[[10, 20, 30, 40], [500, 600, 700, 800]]<|/det|>"
    ids = tok.encode(text)
    pieces = [tok.decode([i]) for i in ids]
    assert "".join(pieces) == text
    second = text.index("[500")
    probs, pos = [], 0
    for p in pieces:  # 0.9 everywhere, 0.1 on the tokens of the second box
        probs.append(0.1 if second <= pos < text.index("]]") + 1 else 0.9)
        pos += len(p)
    r = g.parse_tokens(ids, probs, tok)
    assert r.status == "ok" and r.refs[0].scores is not None
    s1, s2 = r.refs[0].scores
    assert s1 == pytest.approx(0.9) and s2 < 0.5
    d = r.to_detections((100, 100))
    assert d.scores is not None and d.scores.tolist() == pytest.approx([s1, s2])


def test_scores_when_tokens_do_not_align() -> None:
    class OddTokenizer:  # a decoder whose pieces do not concatenate to the whole text
        def decode(self, ids: list[int]) -> str:
            return "<|ref|>a<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>" if len(ids) > 1 else "?"

    r = g.parse_tokens([1, 2, 3, 4], [0.2, 0.4, 0.6, 0.8], OddTokenizer())
    assert r.refs[0].scores == pytest.approx((0.5,))


def test_span_mean_when_a_det_span_does_not_align() -> None:
    tok = VL2Tokenizer.from_dir(DATA / "tokenizer")
    text = "<|ref|>a<|/ref|><|det|>[[1, 2, 3, 4]] 中<|/det|> <|ref|>b<|/ref|><|det|>[[5, 6, 7, 8]]<|/det|>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    probs = [0.1 + 0.8 * i / len(ids) for i in range(len(ids))]
    opens = [i for i, t in enumerate(ids) if t == tok.token_id("<|det|>")]
    closes = [i for i, t in enumerate(ids) if t == tok.token_id("<|/det|>")]
    r = g.parse_tokens(ids, probs, tok)
    first = probs[opens[0] + 1:closes[0]]
    assert r.refs[0].scores == pytest.approx((sum(first) / len(first),))  # "中" splits into byte tokens
    second_box = [p for i, p in enumerate(probs) if opens[1] < i < closes[1]]
    assert r.refs[1].scores == pytest.approx((sum(second_box) / len(second_box),))  # aligned: its own tokens
