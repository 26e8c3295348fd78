"""The settings an experiment axis can vary, and A1111's X/Y/Z syntax for their values.

Values are written as in A1111's X/Y/Z plot script:

    10, 20, 30          a list
    1-5                 1, 2, 3, 4, 5 (inclusive)
    1-9 (+2)            1, 3, 5, 7, 9 (a step; `10-1 (-3)` counts down)
    0.5-1 [3]           0.5, 0.75, 1 (that many values, evenly spaced)
    "a, b", c           text values: CSV quoting keeps a comma inside a value
    512x768, 1024       sizes (width x height; one number = square)

Forms mix freely in one list (`1-3, 10`). Parsing only checks the syntax and the kind of value;
`plan.py` checks each value against the setting's real limits for the chosen model.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass

from pipelines.errors import InvalidRequest
from pipelines.samplers import ALL_SAMPLER_NAMES
from pipelines.vae import VAE_CHOICES

MAX_VALUES_PER_AXIS = 64  # far beyond a readable grid; stops `1-100000` from planning a day of work

_INT = r"[+-]?\d+"
_FLOAT = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"


def _range_patterns(number: str) -> tuple[re.Pattern, re.Pattern, re.Pattern]:
    """`a-b`, `a-b (+s)` and `a-b [n]` for one kind of number."""
    pair = rf"^\s*({number})\s*-\s*({number})\s*"
    return (re.compile(pair + r"$"), re.compile(pair + rf"\(\s*({number})\s*\)\s*$"), re.compile(pair + r"\[\s*(\d+)\s*\]\s*$"))


INT_RANGES = _range_patterns(_INT)
FLOAT_RANGES = _range_patterns(_FLOAT)
SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*$")


@dataclass(frozen=True)
class Setting:
    """One setting an axis can vary."""

    key: str  # the name in experiment files, e.g. "cfg_scale"
    label: str  # the grid label, A1111 style: "CFG scale: 7"
    kind: str  # int | float | text | size
    target: str = "request"  # request: a GenerationRequest field; face: a FaceOptions field
    field: str = ""  # the request/face field it sets (size sets width and height)
    choices: tuple[str, ...] = ()  # the allowed text values, when the set is fixed

    def format(self, value) -> str:
        """How a value reads in a label, a table cell or a CSV column."""
        if self.kind == "size":
            return f"{value[0]}x{value[1]}"
        if self.kind == "float":
            return f"{value:g}"
        return str(value)

    def describe(self, value) -> str:
        return f"{self.label}: {self.format(value)}"


SETTINGS: dict[str, Setting] = {s.key: s for s in (
    Setting("model", "Model", "text", field="model"),
    Setting("prompt", "Prompt", "text", field="prompt"),
    Setting("steps", "Steps", "int", field="steps"),
    Setting("sampler", "Sampler", "text", field="sampler", choices=tuple(ALL_SAMPLER_NAMES)),
    Setting("cfg_scale", "CFG scale", "float", field="cfg_scale"),
    Setting("seed", "Seed", "int", field="seed"),
    Setting("size", "Size", "size"),
    Setting("width", "Width", "int", field="width"),
    Setting("height", "Height", "int", field="height"),
    Setting("vae_dtype", "VAE dtype", "text", field="vae_dtype", choices=tuple(VAE_CHOICES)),
    Setting("deepcache_interval", "DeepCache N", "int", field="deepcache_interval"),
    Setting("deepcache_branch", "DeepCache branch", "int", field="deepcache_branch"),
    Setting("deepcache_schedule", "DeepCache schedule", "text", field="deepcache_schedule", choices=("uniform", "quadratic")),
    Setting("flux_cache", "Block cache", "text", field="flux_cache", choices=("off", "first-block", "taylorseer", "magcache")),
    Setting("flux_cache_threshold", "Block cache threshold", "float", field="flux_cache_threshold"),
    Setting("pulid_weight", "PuLID weight", "float", target="face", field="id_weight"),
    Setting("pulid_start_step", "PuLID start step", "int", target="face", field="start_step"),
)}


def find_setting(key: str) -> Setting:
    """By key ("cfg_scale") or label ("CFG scale"), case-insensitive."""
    wanted = str(key).strip().lower()
    for setting in SETTINGS.values():
        if wanted in (setting.key, setting.label.lower()):
            return setting
    raise InvalidRequest(f"There is no experiment setting {key!r}; choose one of: {', '.join(SETTINGS)}.")


def split_list(text: str) -> list[str]:
    """Comma-separated items with CSV quoting (as A1111 reads them); empty items dropped."""
    rows = list(csv.reader([text.replace("\n", ",")], skipinitialspace=True))
    return [item.strip() for item in (rows[0] if rows else []) if item.strip()]


def parse_values(setting: Setting, text: str) -> list:
    """The values `text` stands for, in order; InvalidRequest naming the axis and the bad item."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(f"The {setting.label} axis has no values; enter a list such as {_example(setting)}.")
    values: list = []
    for item in split_list(text):
        values += _parse_item(setting, item)
        if len(values) > MAX_VALUES_PER_AXIS:
            raise InvalidRequest(f"The {setting.label} axis has more than {MAX_VALUES_PER_AXIS} values ({text!r}); use a coarser step.")
    if not values:
        raise InvalidRequest(f"The {setting.label} axis has no values; enter a list such as {_example(setting)}.")
    return values


def _parse_item(setting: Setting, item: str) -> list:
    if setting.kind == "int":
        return _parse_number(setting, item, int, INT_RANGES)
    if setting.kind == "float":
        return _parse_number(setting, item, float, FLOAT_RANGES)
    if setting.kind == "size":
        match = SIZE_PATTERN.match(item)
        if not match:
            raise InvalidRequest(f"The {setting.label} axis value {item!r} is not a size; write WIDTHxHEIGHT such as 512x768, or one number for a square.")
        width = int(match.group(1))
        return [(width, int(match.group(2) or width))]
    if setting.choices:
        for choice in setting.choices:
            if choice.lower() == item.lower():
                return [choice]
        raise InvalidRequest(f"The {setting.label} axis value {item!r} is not one of: {', '.join(setting.choices)}.")
    return [item]


def _parse_number(setting: Setting, item: str, kind: type, patterns) -> list:
    plain, stepped, counted = patterns
    if match := plain.match(item):
        start, end = kind(match.group(1)), kind(match.group(2))
        return _stepped(setting, item, start, end, kind(1 if end >= start else -1), kind)
    if match := stepped.match(item):
        return _stepped(setting, item, kind(match.group(1)), kind(match.group(2)), kind(match.group(3)), kind)
    if match := counted.match(item):
        start, end, count = kind(match.group(1)), kind(match.group(2)), int(match.group(3))
        if count < 1:
            raise InvalidRequest(f"The {setting.label} axis value {item!r} asks for {count} values; use [1] or more.")
        if count > MAX_VALUES_PER_AXIS:
            raise InvalidRequest(f"The {setting.label} axis value {item!r} asks for {count} values; at most {MAX_VALUES_PER_AXIS} fit on an axis.")
        spaced = [start + (end - start) * i / (count - 1) for i in range(count)] if count > 1 else [start]
        return _dedupe([round(v) for v in spaced]) if kind is int else [_tidy(v) for v in spaced]
    try:
        number = kind(item)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise InvalidRequest(
            f"The {setting.label} axis value {item!r} is not {what} or a range (forms: 10,20,30 · 1-5 · 1-9 (+2) · 0.5-1 [3])."
        ) from None
    if kind is float and not math.isfinite(number):
        raise InvalidRequest(f"The {setting.label} axis value {item!r} is not a finite number.")
    return [number]


def _stepped(setting: Setting, item: str, start, end, step, kind: type) -> list:
    """start, start+step, ... up to and including end (within float rounding)."""
    if step == 0:
        raise InvalidRequest(f"The {setting.label} axis value {item!r} has a step of 0.")
    if (end - start) * step < 0:
        raise InvalidRequest(f"The {setting.label} axis value {item!r} steps away from its end; use a {'negative' if end < start else 'positive'} step.")
    count = int(math.floor((end - start) / step + 1e-9)) + 1
    if count > MAX_VALUES_PER_AXIS:
        raise InvalidRequest(f"The {setting.label} axis value {item!r} gives {count} values; at most {MAX_VALUES_PER_AXIS} fit on an axis.")
    values = [start + i * step for i in range(count)]
    return values if kind is int else [_tidy(v) for v in values]


def _tidy(value: float) -> float:
    """0.30000000000000004 -> 0.3: labels and file names show what the user meant."""
    return float(f"{value:.10g}")


def _dedupe(values: list) -> list:
    seen, kept = set(), []
    for value in values:
        if value not in seen:
            seen.add(value)
            kept.append(value)
    return kept


def _example(setting: Setting) -> str:
    return {"int": "10,20,30 or 1-9 (+2)", "float": "0.5-1 [3]", "size": "512x512, 768x512"}.get(
        setting.kind, ", ".join(setting.choices[:2]) if setting.choices else "a, b")
