"""The client's text from the generated tokens: stop strings held back until they cannot begin."""

from __future__ import annotations

from llmri.frame import Token
from llmri.serve.answer import Answer


def tokens(*texts: str, eos: bool = False) -> list[Token]:
    out = [Token(i, 10 + i, t, "generated", -0.1) for i, t in enumerate(texts)]
    return out + ([Token(len(texts), 2, "<eos>", "generated")] if eos else [])


def feed(a: Answer, toks: list[Token]) -> list[str]:
    pieces = [a.push(t).text for t in toks]
    return [*pieces, a.finish().text]


def test_no_stop_passes_everything_but_eos():
    a = Answer([], eos_ids={2})
    assert feed(a, tokens("Hel", "lo", "!", eos=True)) == ["Hel", "lo", "!", "", ""]
    assert a.text == "Hello!" and a.stopped_by == "eos"


def test_a_possible_stop_is_held_then_released():
    a = Answer(["END"], eos_ids={2})
    out = feed(a, tokens("ab E", "N", "x"))
    assert out == ["ab ", "", "ENx", ""] and a.text == "ab ENx"


def test_stop_cuts_inside_a_token():
    a = Answer(["\n\n", "STOP"], eos_ids={2})
    got = feed(a, tokens("one ", "tw", "oST", "OP and", " more"))
    assert "".join(got) == "one two" and a.stopped_by == "stop_string"
    assert got[-1] == "" and a.push(Token(9, 9, "late", "generated")).text == ""


def test_special_tokens_are_not_text():
    a = Answer([], eos_ids={2}, special_ids={2, 7})
    a.push(Token(0, 7, "<|im_start|>", "generated"))
    a.push(Token(1, 11, "hi", "generated"))
    assert a.finish().text == "" and a.text == "hi"
