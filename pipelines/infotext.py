"""A1111's generation parameters text (the PNG `parameters` chunk): write it and read it back.

Format:
    <prompt>
    Negative prompt: <negative>        (left out when empty)
    Steps: 20, Sampler: Euler a, ..., <our own keys after the standard ones>
"""
from __future__ import annotations

import json
import re

# A1111's own pattern for one `Key: value` pair (modules/infotext_utils.py).
PARAM_PATTERN = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
IMAGE_SIZE_PATTERN = re.compile(r"^(\d+)x(\d+)$")


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


def parse_infotext(text: str) -> dict:
    """Read parameters back the way A1111 does: the last line holds them if it has 3+ matches."""
    result: dict = {}
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    if len(PARAM_PATTERN.findall(last)) < 3:
        last = ""
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
    for key, value in PARAM_PATTERN.findall(last):
        value = unquote(value.strip())
        size = IMAGE_SIZE_PATTERN.match(value)
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        result[key] = value
    return result
