"""A1111's prompt syntax: attention weights, escapes, BREAK and extra-network tags.

The rules are those of A1111's `parse_prompt_attention` (written anew here):

- `(text)` multiplies the weight of `text` by 1.1, `[text]` divides it by 1.1, `(text:1.3)` multiplies
  it by 1.3 (spaces around `:` and the number are allowed: `(text : 1.3)`); nesting multiplies.
- `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are literal characters; a lone backslash is dropped.
- A `)` or `]` with nothing open is plain text; a bracket still open at the end applies its
  multiplier from where it opened (`(unbalanced` -> 1.1).
- `BREAK` (capitals, a word of its own) ends the current 75-token chunk. Unlike A1111, a BREAK inside
  brackets is still a BREAK (A1111 encodes the word with a weight of -1.1 there).
- Runs of equal weight are merged; an empty prompt is `[("", 1.0)]`.

`<name:...>` tags (LoRA, hypernetworks) are not prompt text: `strip_extra_networks` removes them
before parsing, and the parser never sees them.
"""
from __future__ import annotations

import re

ROUND = 1.1
SQUARE = 1 / 1.1
BREAK = "BREAK"
BREAK_WEIGHT = -1.0  # the marker's weight, as A1111 spells it; never multiplied

Fragment = tuple[str, float]

_TOKENS = re.compile(
    r"""
    \\[()\[\]\\]                 # an escaped bracket or backslash: a literal character
    | \\                         # a lone backslash: dropped
    | \( | \[                    # openers
    | :\s*([+-]?[.\d]+)\s*\)     # ':1.3)' closes a round bracket with an explicit weight
    | \) | \]                    # closers
    | [^\\()\[\]:]+              # plain text
    | :                          # a colon that is not part of a weight
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


def strip_extra_networks(text: str) -> str:
    """The prompt without its `<kind:args>` tags (`<lora:name:0.8>`, `<hypernet:name:1>`, ...)."""
    return _EXTRA_NETWORK.sub("", text)


def find_extra_networks(text: str) -> list[tuple[str, list[str]]]:
    """Each `<kind:a:b>` tag as (kind, [a, b]), in prompt order."""
    return [(match.group(1), match.group(2).split(":")) for match in _EXTRA_NETWORK.finditer(text)]


def is_break(fragment: Fragment) -> bool:
    return fragment[0] == BREAK and fragment[1] == BREAK_WEIGHT


def parse_prompt_attention(text: str) -> list[Fragment]:
    """The prompt as (text, weight) fragments, BREAK as its own ("BREAK", -1.0) marker."""
    pieces: list[list] = []  # [text, weight, is_marker]
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if not piece[2]:
                piece[1] *= factor

    def add_text(chunk: str) -> None:
        for index, part in enumerate(_BREAK.split(chunk)):
            if index:
                pieces.append([BREAK, BREAK_WEIGHT, True])
            pieces.append([part, 1.0, False])

    for match in _TOKENS.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0, False])
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open and _number(weight) is not None:
            multiply_from(round_open.pop(), _number(weight))
        elif token == ")" and round_open:
            multiply_from(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE)
        else:
            add_text(token)
    for start in round_open:
        multiply_from(start, ROUND)
    for start in square_open:
        multiply_from(start, SQUARE)

    merged: list[list] = []
    for piece in pieces:
        if merged and not piece[2] and not merged[-1][2] and merged[-1][1] == piece[1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(piece[0], piece[1]) for piece in merged] or [("", 1.0)]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # '1.2.3' or '.': A1111 raises; here it stays text
        return None


def parse_prompt(text: str) -> list[Fragment]:
    """What the CLIP encoders read: extra-network tags removed, then the attention syntax parsed."""
    return parse_prompt_attention(strip_extra_networks(text))


def has_weights(fragments: list[Fragment]) -> bool:
    """Whether the parsed prompt uses any weight or BREAK (plain text and escapes do not count)."""
    return any(is_break(f) or f[1] != 1.0 for f in fragments)


def plain_text(fragments: list[Fragment]) -> str:
    """The words without weights or brackets (for FLUX.1's T5, which has no such convention)."""
    return " ".join(text for text in _join_breaks(fragments))


def _join_breaks(fragments: list[Fragment]) -> list[str]:
    parts, current = [], ""
    for fragment in fragments:
        if is_break(fragment):
            parts.append(current)
            current = ""
        else:
            current += fragment[0]
    return [p for p in parts + [current] if p] or [""]


def prompt_key(fragments: list[Fragment]) -> tuple:
    """A cache key for the parsed prompt: `(cat)` and `(cat:1.1)` share it, `cat` does not."""
    return tuple((text, BREAK_WEIGHT if is_break((text, weight)) else round(weight, 6)) for text, weight in fragments)


def flux_text(text: str) -> tuple[str, bool]:
    """FLUX.1's prompt: the words without weights, brackets or tags, and whether any weight was dropped."""
    fragments = parse_prompt(text)
    return plain_text(fragments), has_weights(fragments)


def prompt_memo_key(prompt: str, negative: str, *extra) -> tuple:
    """The encoded-prompt memo's key for the text: the parsed prompts (so `(cat)` and `cat` differ and
    `(cat)` / `(cat:1.1)` share), the extra-network tags (their weights may change the text encoders),
    and whatever else the caller adds (`extra`, e.g. the LoRA set)."""
    return (prompt_key(parse_prompt(prompt)), prompt_key(parse_prompt(negative)),
            tuple((kind, tuple(args)) for kind, args in find_extra_networks(prompt) + find_extra_networks(negative)), extra)
