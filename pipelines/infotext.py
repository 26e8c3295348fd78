"""A1111's generation parameters text (the PNG `parameters` chunk): write it and read it back.

Format:
    <prompt>
    Negative prompt: <negative>        (left out when empty)
    Steps: 20, Sampler: Euler a, ..., <our own keys after the standard ones>
"""
from __future__ import annotations

import json
import re

# A1111's own pattern for one `Key: value` pair (modules/infotext_utils.py). Kept as the reference
# `param_pairs` is tested against; never run it on uploaded text: `findall` over one long line without
# a `:` retries the whole line from every position (quadratic: 64 000 characters took 35 s).
PARAM_PATTERN = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
IMAGE_SIZE_PATTERN = re.compile(r"^(\d+)x(\d+)$")
MODEL_TITLE = re.compile(r"^(?P<name>.*?)\s*\[(?P<hash>[0-9a-fA-F]{8,64})\]$")  # A1111's checkpoint title: "name [hash]"


def quote(value) -> str:
    """JSON-quote a value that would otherwise break the `k: v, k: v` line."""
    text = str(value)
    wrapped_in_quotes = len(text) >= 2 and text[0] == '"' and text[-1] == '"'  # the reader would strip them
    if "," not in text and ":" not in text and "\n" not in text and not wrapped_in_quotes:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def build_infotext(prompt: str, negative_prompt: str, params: dict) -> str:
    """`params` in order: standard A1111 keys first, ours after. None values are left out."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {quote(value)}" for key, value in params.items() if value is not None))
    return "\n".join(lines)


def _is_key_char(char: str) -> bool:  # [\w \-/]
    return char.isalnum() or char in "_ -/"


def param_pairs(line: str) -> list[tuple[str, str]]:
    """`PARAM_PATTERN.findall(line)`, in one pass: linear time whatever the input.

    Where the pattern fails at a position, it fails at every later position up to the end of the
    key-like run it scanned (the run ends there whichever of its characters the key starts on), so
    the scan resumes after that run instead of one character further.
    """
    pairs: list[tuple[str, str]] = []
    n, pos = len(line), 0
    while pos < n:
        start = pos
        while start < n and line[start].isspace():  # \s*
            start += 1
        if start >= n or not (line[start].isalnum() or line[start] == "_"):  # \w
            pos = start + 1
            continue
        end = start + 1
        while end < n and _is_key_char(line[end]):  # [\w \-/]+ (greedy; only its full length can meet the colon)
            end += 1
        if end - start < 2 or end >= n or line[end] != ":":
            pos = end
            continue
        key = line[start:end]
        value_start = end + 1
        while value_start < n and line[value_start].isspace():  # \s*
            value_start += 1
        value_end = _quoted_end(line, value_start)
        if value_end is not None and (value_end == n or line[value_end] == "," or (value_end == n - 1 and line[value_end] == "\n")):
            pos = value_end + 1 if value_end < n and line[value_end] == "," else value_end
        else:  # [^,]* up to the next comma, which the match takes, or the end
            comma = line.find(",", value_start)
            value_end = n if comma < 0 else comma
            pos = n if comma < 0 else comma + 1
        pairs.append((key, line[value_start:value_end]))
    return pairs


def _quoted_end(line: str, start: int) -> int | None:
    """The end of `"(?:\\.|[^\\"])+"` at `start`, or None: a backslash takes the next character (not
    a newline), anything else but a quote is one character, and at least one must come before the quote."""
    n = len(line)
    if start >= n or line[start] != '"':
        return None
    at = start + 1
    while at < n:
        char = line[at]
        if char == "\\":
            if at + 1 < n and line[at + 1] != "\n":
                at += 2
                continue
            return None
        if char == '"':
            return at + 1 if at > start + 1 else None
        at += 1
    return None


def parse_infotext(text: str) -> dict:
    """Read parameters back the way A1111 does: the last line holds them if it has 3+ matches."""
    result: dict = {}
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    pairs = param_pairs(last)
    if len(pairs) < 3:
        pairs = []
    else:
        lines = lines[:-1]
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].lstrip()
        (negative_lines if in_negative else prompt_lines).append(line)
    result["Prompt"] = "\n".join(prompt_lines).strip()
    result["Negative prompt"] = "\n".join(negative_lines).strip()
    for key, value in pairs:
        value = unquote(value.strip())
        size = IMAGE_SIZE_PATTERN.match(value)
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        result[key] = value
    return result
