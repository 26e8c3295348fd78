"""A1111's prompt syntax: the docstring examples of its parser, escapes, unbalanced brackets, BREAK, tags."""
from __future__ import annotations

import pytest

from pipelines.prompts.syntax import (
    find_extra_networks, flux_text, parse_prompt, parse_prompt_attention, prompt_memo_key, strip_extra_networks,
)


def approx(fragments):
    return [(text, pytest.approx(weight)) for text, weight in fragments]


@pytest.mark.parametrize(("text", "expected"), [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", [
        ("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.4641), (".", 1.1)]),
])
def test_a1111_docstring_examples(text, expected):
    assert parse_prompt_attention(text) == approx(expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("(cat : 1.5) dog", [("cat ", 1.5), (" dog", 1.0)]),  # spaces around the weight
    ("[cat]", [("cat", 1 / 1.1)]),
    ("[[cat]", [("cat", 1 / 1.1 / 1.1)]),  # an open square bracket at the end still applies
    ("((cat:2))", [("cat", 2.2)]),  # nesting multiplies
    ("cat)", [("cat)", 1.0)]),  # a closer with nothing open is text
    ("cat:1.2)", [("cat:1.2)", 1.0)]),
    ("a \\\\ b", [("a \\ b", 1.0)]),
    ("(cat:1.2.3)", [("cat:1.2.3)", 1.1)]),  # not a number: text (A1111 raises), the paren stays open
    ("", [("", 1.0)]),
])
def test_weights_escapes_and_unbalanced(text, expected):
    assert parse_prompt_attention(text) == approx(expected)


def test_break_is_its_own_marker_and_a_word_of_its_own():
    assert parse_prompt_attention("a cat BREAK a dog") == [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]
    assert parse_prompt_attention("(a BREAK b)") == approx([("a", 1.1), ("BREAK", -1.0), ("b", 1.1)])
    assert parse_prompt_attention("BREAKFAST break") == [("BREAKFAST break", 1.0)]


def test_extra_network_tags_are_dropped_never_an_error():
    text = "a cat <lora:film grain:0.8>, <hypernet:x:1> (red:1.2)"
    assert strip_extra_networks(text) == "a cat ,  (red:1.2)"
    assert find_extra_networks(text) == [("lora", ["film grain", "0.8"]), ("hypernet", ["x", "1"])]
    assert parse_prompt(text) == [("a cat ,  ", 1.0), ("red", 1.2)]
    assert parse_prompt("<lora:unclosed") == [("<lora:unclosed", 1.0)]


def test_flux_text_keeps_the_words():
    assert flux_text("a (red:1.3) [cat] BREAK on a mat") == ("a red cat on a mat", True)
    assert flux_text("a plain prompt, with: colons") == ("a plain prompt, with: colons", False)
    assert flux_text("\\(literal\\)") == ("(literal)", False)


def test_memo_key_follows_the_parsed_prompt():
    assert prompt_memo_key("(cat)", "") == prompt_memo_key("(cat:1.1)", "")
    assert prompt_memo_key("(cat)", "") != prompt_memo_key("cat", "")
    assert prompt_memo_key("cat", "ugly") != prompt_memo_key("cat", "")
    assert prompt_memo_key("cat <lora:a:1>", "") != prompt_memo_key("cat <lora:b:1>", "")
    assert prompt_memo_key("cat", "", ("lora", "a")) != prompt_memo_key("cat", "")
