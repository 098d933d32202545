"""The reasoning parser: `<think>` text apart from the answer, however the text is cut."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.deltas import ReasoningPart, TextPart
from api.reasoning import ReasoningParser, reasoning_markers, starts_inside_for


def run(pieces: list[str], starts_inside: bool = False) -> tuple[str, str]:
    """(reasoning, text), checking that no part is empty."""
    parser = ReasoningParser(starts_inside=starts_inside)
    parts = [part for piece in pieces for part in parser.feed(piece)] + parser.finish()
    assert all(part.text for part in parts)
    reasoning = "".join(part.text for part in parts if isinstance(part, ReasoningPart))
    text = "".join(part.text for part in parts if isinstance(part, TextPart))
    return reasoning, text


def every_cut(text: str) -> list[list[str]]:
    return [[text], list(text), *([text[:cut], text[cut:]] for cut in range(1, len(text)))]


CASES = [
    ("<think>\nLet me think: 2 + 2.\n</think>\n\nThe answer is 4.", False, "Let me think: 2 + 2.\n",
     "The answer is 4."),
    ("Working it out.\n</think>\n\n4", True, "Working it out.\n", "4"),
    ("<think>still thinking when the tokens ran out", False, "still thinking when the tokens ran out", ""),
    ("still thinking </thi", True, "still thinking </thi", ""),
    ("No thinking, and a < sign and <thin", False, "", "No thinking, and a < sign and <thin"),
    ("<think></think>Straight to it.", False, "", "Straight to it."),
    ("", True, "", ""),
]


@pytest.mark.parametrize("answer, starts_inside, reasoning, text", CASES)
def test_reasoning_and_text_come_apart_however_the_answer_is_cut(answer, starts_inside, reasoning, text):
    for pieces in every_cut(answer):
        assert run(pieces, starts_inside) == (reasoning, text), pieces


@given(answer=st.lists(st.sampled_from(["<think>", "</think>", "<", "/", "think", ">", "a", " ", "\n"]),
                       max_size=30).map("".join),
       cuts=st.lists(st.integers(0, 200), max_size=6), starts_inside=st.booleans())
def test_any_text_in_any_pieces_parses_as_it_does_whole(answer, cuts, starts_inside):
    bounds = [0, *sorted(c for c in cuts if c <= len(answer)), len(answer)]
    pieces = [answer[a:b] for a, b in zip(bounds, bounds[1:])]
    assert run(pieces, starts_inside) == run([answer], starts_inside)


def test_custom_markers():
    parser = ReasoningParser("<reasoning>", "</reasoning>")
    parts = parser.feed("<reason") + parser.feed("ing>why</reasoning>so") + parser.finish()
    assert parts == [ReasoningPart("why"), TextPart("so")]


@pytest.mark.parametrize("template, vocab, expected", [
    (None, {"<think>": 1, "a": 2}, ("<think>", "</think>")),
    ("{{ '<think>\\n' }}{% if enable_thinking %}", [], ("<think>", "</think>")),
    ("{% for message in messages %}{{ message.content }}{% endfor %}", iter(["a", "<|im_end|>"]), None),
    (None, [], None),
])
def test_reasoning_markers_come_from_the_vocabulary_or_template(template, vocab, expected):
    assert reasoning_markers(template, vocab) == expected


@pytest.mark.parametrize("prompt, inside", [
    ("<|im_start|>assistant\n<think>\n", True),
    ("<｜Assistant｜><think>", True),
    ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),
    ("<|im_start|>assistant\n", False),
])
def test_starts_inside_when_the_prompt_opened_the_reasoning(prompt, inside):
    assert starts_inside_for(prompt) is inside
