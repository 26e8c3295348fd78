"""A1111's prompt editing and alternating words: which prompt text each denoising step reads.

The rules are those of A1111's `prompt_parser.get_learned_conditioning_prompt_schedules` with its
default (new) scheduling, written anew here:

- `[from:to:when]` reads `from` up to step `when`, then `to`; `[to:when]` adds `to` after `when`;
  `[from::when]` removes `from` after `when`. A `when` with a decimal point is a fraction of the steps
  (`0.25` of 20 steps = step 5), without one a step number (`5`); it is capped at the steps.
- `[a|b|c]` alternates the words step by step (a, b, c, a, ...); an option may be empty.
- Both nest, and contain or sit inside attention brackets (`[(red:1.2):blue:0.5]`): the brackets
  are kept in each step's text, which is then read as usual (weights, BREAK, textual inversions).
- A schedule is a list of (last_step, text): 0-based sampler step `i` reads the first entry whose
  `last_step >= i`, as A1111's denoiser compares its step counter, so `[a:b:10]` at 20 steps reads
  `a` at steps 0-10 and `b` at 11-19. Each pass counts its own steps from 0 (img2img counts the
  steps it runs, as A1111 does).
- A hires pass of N steps after a first pass of B steps reads its own schedule: a step number `when`
  counts from the start of the first pass (`when - B` in the hires pass), a fraction from 1 to 2
  spans the hires pass (`1.5` = half way through it), so `[a:b:0.5]` reads `b` for the whole pass.
- `[text]` and `(text)` without `:` / `|` are attention brackets, left to `syntax.parse_prompt_attention`.
- A `[ ... ]` that is neither (`[a:b]`, `[a:b|c]`, a `when` that is not a number) makes A1111's parser
  fail, and then the whole prompt is read as written, without editing; so it is here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = re.compile(r"\s*((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*")
_MAX_DEPTH = 100  # deeper nesting is not a schedule anybody writes; read the prompt as written


class _NotSchedulable(Exception):
    """The prompt does not parse as A1111's grammar: it is read as written."""


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Bracket:  # attention brackets, kept in the text: ( ... ) or [ ... ]
    opener: str
    body: tuple
    closer: str


@dataclass(frozen=True)
class _Edit:  # [before:after:when]
    before: tuple
    after: tuple
    when: str


@dataclass(frozen=True)
class _Alternate:  # [a|b|c]
    options: tuple


def _bracket_pairs(text: str) -> dict[int, int]:
    """Each opener's matching closer, in one pass: a closer that does not match the innermost open
    bracket, and an opener never closed, are plain characters (as in the attention parser)."""
    pairs, stack, index = {}, [], 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char in "([":
            stack.append(index)
        elif char in ")]" and stack and text[stack[-1]] == "(["[")]".index(char)]:
            pairs[stack.pop()] = index
        index += 1
    return pairs


def _parse(text: str, start: int, end: int, pairs: dict[int, int], depth: int, split: bool) -> list[list]:
    """The nodes of text[start:end]; with `split` (inside `[ ]`) a list of parts, each ending at a
    top-level `:` or `|`, which are returned between them as plain strings."""
    if depth > _MAX_DEPTH:
        raise _NotSchedulable
    parts: list = [[]]
    buffer: list[str] = []

    def flush() -> None:
        if buffer:
            parts[-1].append(_Text("".join(buffer)))
            buffer.clear()

    index = start
    while index < end:
        char = text[index]
        if char == "\\":
            buffer.append(text[index:index + 2])
            index += 2
        elif char in "([" and index in pairs:
            flush()
            parts[-1].append(_group(text, index, pairs, depth))
            index = pairs[index] + 1
        elif split and char in ":|":
            flush()
            parts += [char, []]
            index += 1
        else:
            buffer.append(char)
            index += 1
    flush()
    return parts


def _group(text: str, opener: int, pairs: dict[int, int], depth: int):
    closer = pairs[opener]
    if text[opener] == "(":  # attention: a `:` in it is the weight's, read later
        body = _parse(text, opener + 1, closer, pairs, depth + 1, split=False)[0]
        return _Bracket("(", tuple(body), ")")
    parts = _parse(text, opener + 1, closer, pairs, depth + 1, split=True)
    bodies, separators = parts[0::2], parts[1::2]
    if not separators:
        return _Bracket("[", tuple(bodies[0]), "]")
    if separators[-1] == ":" and (when := _when(bodies[-1])) is not None:
        texts = _rejoin(bodies[:-1], separators[:-1])  # a `|` in a text being edited is a plain character (A1111)
        if len(texts) <= 2:
            before, after = texts if len(texts) == 2 else ([], texts[0])
            return _Edit(tuple(before), tuple(after), when)
    elif set(separators) == {"|"}:
        return _Alternate(tuple(tuple(body) for body in bodies))
    raise _NotSchedulable


def _rejoin(bodies: list[list], separators: list[str]) -> list[list]:
    """The bodies between `:` separators, those split at a `|` joined again with a plain `|`."""
    texts = [list(bodies[0])]
    for separator, body in zip(separators, bodies[1:]):
        if separator == ":":
            texts.append(list(body))
        else:
            texts[-1] += [_Text("|")] + list(body)
    return texts


def _when(body: list) -> str | None:
    if len(body) == 1 and isinstance(body[0], _Text) and (match := _NUMBER.fullmatch(body[0].text)):
        return match.group(1)
    return None


def _nodes(text: str) -> list | None:
    """The prompt's nodes; None when it has no editing (nothing to schedule) or does not parse."""
    if "[" not in text:
        return None
    try:
        nodes = _parse(text, 0, len(text), _bracket_pairs(text), 0, split=False)[0]
    except _NotSchedulable:
        return None
    return nodes if _any_scheduled(nodes) else None


def _any_scheduled(nodes) -> bool:
    for node in nodes:
        if isinstance(node, (_Edit, _Alternate)):
            return True
        if isinstance(node, _Bracket) and _any_scheduled(node.body):
            return True
    return False


def _switch_step(when: str, steps: int, first_pass_steps: int | None) -> int:
    """The last step that reads the text before the switch (A1111: `min(steps, int(v))`)."""
    value = float(when)
    if "." in when:
        value = (value - (1.0 if first_pass_steps is not None else 0.0)) * steps
    else:
        value -= first_pass_steps or 0
    return min(steps, int(value))


def _boundaries(nodes, steps: int, first_pass_steps: int | None, found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Edit):
            switch = _switch_step(node.when, steps, first_pass_steps)
            if switch >= 1:
                found.add(switch)
            _boundaries(node.before + node.after, steps, first_pass_steps, found)
        elif isinstance(node, _Alternate):
            found.update(range(1, steps + 1))
            for option in node.options:
                _boundaries(option, steps, first_pass_steps, found)
        elif isinstance(node, _Bracket):
            _boundaries(node.body, steps, first_pass_steps, found)


def _render(nodes, step: int, steps: int, first_pass_steps: int | None) -> str:
    out = []
    for node in nodes:
        if isinstance(node, _Text):
            out.append(node.text)
        elif isinstance(node, _Bracket):
            out.append(node.opener + _render(node.body, step, steps, first_pass_steps) + node.closer)
        elif isinstance(node, _Edit):
            chosen = node.before if step <= _switch_step(node.when, steps, first_pass_steps) else node.after
            out.append(_render(chosen, step, steps, first_pass_steps))
        else:
            out.append(_render(node.options[(step - 1) % len(node.options)], step, steps, first_pass_steps))
    return "".join(out)


def prompt_schedule(text: str, steps: int, first_pass_steps: int | None = None) -> list[tuple[int, str]]:
    """(last_step, text) pairs covering `steps` steps; `[(steps, text)]` when the prompt has no editing.
    `first_pass_steps`: this is a hires pass after a first pass of that many steps."""
    nodes = _nodes(text)
    if nodes is None:
        return [(steps, text)]
    found = {steps}
    _boundaries(nodes, steps, first_pass_steps, found)
    return [(step, _render(nodes, step, steps, first_pass_steps)) for step in sorted(found)]


def has_editing(*texts: str) -> bool:
    """Whether any of the texts (a prompt and its negative) uses prompt editing or alternating words."""
    return any(_nodes(text) is not None for text in texts)


@dataclass(frozen=True)
class Segment:
    """Steps up to `last_step` (0-based, inclusive, from the previous segment's end) read these texts."""

    last_step: int
    prompt: str
    negative: str


def segment_schedule(prompt: str, negative: str, steps: int, first_pass_steps: int | None = None) -> list[Segment]:
    """The prompt's and the negative prompt's schedules merged: one segment per change of either (A1111 lists a step
    whose text did not change, `[a|a]`, as an entry of its own and encodes it again; here it extends the segment)."""
    positive, negated = prompt_schedule(prompt, steps, first_pass_steps), prompt_schedule(negative, steps, first_pass_steps)
    ends = sorted({end for end, _ in positive} | {end for end, _ in negated})
    segments: list[Segment] = []
    for end in ends:
        segment = Segment(end, text_at(positive, end), text_at(negated, end))
        if segments and (segments[-1].prompt, segments[-1].negative) == (segment.prompt, segment.negative):
            segments[-1] = segment
        else:
            segments.append(segment)
    return segments


def text_at(schedule: list[tuple[int, str]], step: int) -> str:
    """The text a 0-based step reads: the first entry that lasts up to it (the last one past the end)."""
    for last_step, text in schedule:
        if step <= last_step:
            return text
    return schedule[-1][1]


def segment_index(segments: list[Segment], step: int) -> int:
    for index, segment in enumerate(segments):
        if step <= segment.last_step:
            return index
    return len(segments) - 1
