"""The settings an experiment axis can vary, and A1111's X/Y/Z syntax for their values.

Values are written as in A1111's X/Y/Z plot script:

    10, 20, 30          a list
    1-5                 1, 2, 3, 4, 5 (inclusive)
    1-9 (+2)            1, 3, 5, 7, 9 (a step; `10-1 (-3)` counts down)
    0.5-1 [3]           0.5, 0.75, 1 (that many values, evenly spaced)
    "a, b", c           text values: CSV quoting keeps a comma inside a value
    dog, cat, "red fox" Prompt S/R: the first value is searched for; each value replaces it
    red, big, at dusk   Prompt order: every order of these fragments of the prompt (4 at most: 24 orders)
    512x768, 1024       sizes (width x height; one number = square)

Forms mix freely in one list (`1-3, 10`). Parsing only checks the syntax and the kind of value;
`plan.py` checks each value against the setting's real limits for the chosen model.
"""
from __future__ import annotations

import csv
import itertools
import math
import re
from dataclasses import dataclass

from pipelines.choices import HIRES_SAME_SAMPLER, SCHEDULE_TYPES, VAE_CHOICES
from pipelines.errors import InvalidRequest
from pipelines.request import DEEPCACHE_SCHEDULES, FLUX_CACHE_CHOICES, shown
from pipelines.samplers import LEGACY_SAMPLER_NAMES, SAMPLER_NAMES

MAX_VALUES_PER_AXIS = 64  # far beyond a readable grid; stops `1-100000` from planning a day of work
MAX_AXIS_CHARS = 16 * 1024  # 64 values of any setting fit many times over; the CSV reader stops at 128 KiB anyway
MAX_ORDERED_FRAGMENTS = 4  # 4! = 24 orders; 5! = 120 is past MAX_VALUES_PER_AXIS
NO_STYLE = "None"  # a Styles axis value that adds no style: the grid's plain column
MAX_NUMBER = 10**15  # beyond every setting's real limit (seeds end at 2**32); keeps range arithmetic finite

_INT = r"[+-]?\d+"
_FLOAT = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"


def _range_patterns(number: str) -> tuple[re.Pattern, re.Pattern, re.Pattern]:
    """`a-b`, `a-b (+s)` and `a-b [n]` for one kind of number."""
    pair = rf"^\s*({number})\s*-\s*({number})\s*"
    return (re.compile(pair + r"$"), re.compile(pair + rf"\(\s*({number})\s*\)\s*$"), re.compile(pair + r"\[\s*(\d+)\s*\]\s*$"))


INT_RANGES = _range_patterns(_INT)
FLOAT_RANGES = _range_patterns(_FLOAT)
SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*$")
BOOL_WORDS = {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False}


@dataclass(frozen=True)
class Setting:
    """One setting an axis can vary."""

    key: str  # the name in experiment files, e.g. "cfg_scale"
    label: str  # the grid label, A1111 style: "CFG scale: 7"
    kind: str  # int | float | bool (on/off) | text | size | search_replace (Prompt S/R: (search, replacement) pairs) |
    #            order (Prompt order: a tuple of the prompt's fragments, in the order they take)
    target: str = "request"  # request: a GenerationRequest field; face: a FaceOptions field; prompt: an edit of the prompt
    field: str = ""  # the request/face field it sets (size sets width and height)
    choices: tuple[str, ...] = ()  # the allowed text values, when the set is fixed
    also_accepted: tuple[str, ...] = ()  # older spellings taken too, not offered (A1111's "DPM++ 2M Karras")

    def format(self, value) -> str:
        """How a value reads in a label, a table cell or a CSV column."""
        if self.kind == "size":
            return f"{value[0]}x{value[1]}"
        if self.kind == "float":
            return f"{value:g}"
        if self.kind == "bool":
            return "on" if value else "off"
        if self.kind == "search_replace":
            return value[1]
        if self.kind == "order":
            return ", ".join(value)
        return str(value)

    def describe(self, value) -> str:
        return f"{self.label}: {self.format(value)}"


SETTINGS: dict[str, Setting] = {s.key: s for s in (
    Setting("model", "Model", "text", field="model"),
    Setting("prompt", "Prompt", "text", field="prompt"),
    Setting("steps", "Steps", "int", field="steps"),
    Setting("sampler", "Sampler", "text", field="sampler", choices=tuple(SAMPLER_NAMES), also_accepted=tuple(LEGACY_SAMPLER_NAMES)),
    Setting("schedule_type", "Schedule type", "text", field="schedule_type", choices=SCHEDULE_TYPES),
    Setting("cfg_scale", "CFG scale", "float", field="cfg_scale"),
    Setting("clip_skip", "Clip skip", "int", field="clip_skip"),
    Setting("tiling", "Tiling", "bool", field="tiling"),
    Setting("token_merging_ratio", "Token merging ratio", "float", field="token_merging_ratio"),
    Setting("vae", "SD VAE", "text", field="vae"),
    Setting("seed", "Seed", "int", field="seed"),
    Setting("subseed", "Variation seed", "int", field="subseed"),
    Setting("subseed_strength", "Variation strength", "float", field="subseed_strength"),
    Setting("size", "Size", "size"),
    Setting("width", "Width", "int", field="width"),
    Setting("height", "Height", "int", field="height"),
    Setting("vae_dtype", "VAE dtype", "text", field="vae_dtype", choices=tuple(VAE_CHOICES)),
    Setting("deepcache_interval", "DeepCache N", "int", field="deepcache_interval"),
    Setting("deepcache_branch", "DeepCache branch", "int", field="deepcache_branch"),
    Setting("deepcache_schedule", "DeepCache schedule", "text", field="deepcache_schedule", choices=DEEPCACHE_SCHEDULES),
    Setting("flux_cache", "Block cache", "text", field="flux_cache", choices=FLUX_CACHE_CHOICES),
    Setting("flux_cache_threshold", "Block cache threshold", "float", field="flux_cache_threshold"),
    Setting("denoising_strength", "Denoising strength", "float", field="denoising_strength"),
    Setting("hires_scale", "Hires scale", "float", field="hires_scale"),
    Setting("hires_denoising", "Hires denoising", "float", field="hires_denoising"),
    Setting("hires_steps", "Hires steps", "int", field="hires_steps"),  # A1111's axis; 0 = the first pass's steps
    Setting("hires_upscaler", "Hires upscaler", "text", field="hires_upscaler"),  # Latent, Lanczos, Nearest, ESRGAN files
    Setting("hires_sampler", "Hires sampler", "text", field="hires_sampler", choices=(HIRES_SAME_SAMPLER, *SAMPLER_NAMES),
            also_accepted=tuple(LEGACY_SAMPLER_NAMES)),
    Setting("hires_checkpoint", "Hires checkpoint", "text", field="hires_checkpoint"),  # a model of the family, or Use same checkpoint
    Setting("refiner_checkpoint", "Refiner checkpoint", "text", field="refiner_checkpoint"),  # a model of the family, or None
    Setting("refiner_switch_at", "Refiner switch at", "float", field="refiner_switch_at"),
    Setting("prompt_sr", "Prompt S/R", "search_replace", target="prompt", field="prompt_sr"),
    Setting("prompt_order", "Prompt order", "order", target="prompt", field="prompt_order"),
    Setting("styles", "Styles", "text", field="styles"),  # a style name added to the starting settings' styles, or None
    Setting("lora_weight", "LoRA weight", "float", target="prompt", field="lora_weight"),
    Setting("pulid_weight", "PuLID weight", "float", target="face", field="id_weight"),
    Setting("pulid_start_step", "PuLID start step", "int", target="face", field="start_step"),
    Setting("face_detail", "Face detailer", "bool", field="face_detail"),
    Setting("face_detail_strength", "Face detailer strength", "float", field="face_detail_strength"),
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
    if len(text) > MAX_AXIS_CHARS:
        raise InvalidRequest(f"The {setting.label} axis values are {len(text):,} characters long; at most {MAX_AXIS_CHARS:,} are read.")
    values: list = []
    if setting.kind == "search_replace":  # A1111's Prompt S/R: (search string, this value) per value
        items = split_list(text)
        values = [(items[0], item) for item in items] if items else []
        if len(values) > MAX_VALUES_PER_AXIS:
            raise InvalidRequest(f"The {setting.label} axis has more than {MAX_VALUES_PER_AXIS} values ({shown(text, 80)}).")
    if setting.kind == "order":
        values = _orders(setting, split_list(text))
    for item in [] if setting.kind in ("search_replace", "order") else split_list(text):
        values += _parse_item(setting, item)
        if len(values) > MAX_VALUES_PER_AXIS:
            raise InvalidRequest(f"The {setting.label} axis has more than {MAX_VALUES_PER_AXIS} values ({shown(text, 80)}); use a coarser step.")
    if not values:
        raise InvalidRequest(f"The {setting.label} axis has no values; enter a list such as {_example(setting)}.")
    return values


def _orders(setting: Setting, fragments: list[str]) -> list[tuple[str, ...]]:
    """A1111's Prompt order: every permutation of the fragments, the typed order first."""
    if len(fragments) > MAX_ORDERED_FRAGMENTS:
        orders = f"{math.factorial(len(fragments)):,}" if len(fragments) <= 12 else "billions of"  # 8,000! would be 27,000 digits
        raise InvalidRequest(f"The {setting.label} axis has {len(fragments):,} fragments ({orders} orders); "
                             f"at most {MAX_ORDERED_FRAGMENTS} fit on an axis ({math.factorial(MAX_ORDERED_FRAGMENTS)} orders).")
    repeated = next((fragment for fragment in fragments if fragments.count(fragment) > 1), None)
    if repeated is not None:
        raise InvalidRequest(f"The {setting.label} axis names {shown(repeated)} twice; each fragment of the prompt once.")
    return list(itertools.permutations(fragments))


def _parse_item(setting: Setting, item: str) -> list:
    if setting.kind == "int":
        return _parse_number(setting, item, int, INT_RANGES)
    if setting.kind == "float":
        return _parse_number(setting, item, float, FLOAT_RANGES)
    if setting.kind == "bool":
        if item.lower() in BOOL_WORDS:
            return [BOOL_WORDS[item.lower()]]
        raise InvalidRequest(f"The {setting.label} axis value {shown(item)} is not on or off.")
    if setting.kind == "size":
        match = SIZE_PATTERN.match(item)
        if not match:
            raise InvalidRequest(f"The {setting.label} axis value {shown(item)} is not a size; write WIDTHxHEIGHT such as 512x768, or one number for a square.")
        width = _number(setting, item, match.group(1), int)
        return [(width, _number(setting, item, match.group(2), int) if match.group(2) else width)]
    if setting.choices:
        for choice in setting.choices + setting.also_accepted:
            if choice.lower() == item.lower():
                return [choice]
        raise InvalidRequest(f"The {setting.label} axis value {shown(item)} is not one of: {', '.join(setting.choices)}.")
    return [item]


def _parse_number(setting: Setting, item: str, kind: type, patterns) -> list:
    plain, stepped, counted = patterns
    if match := plain.match(item):
        start, end = (_number(setting, item, group, kind) for group in match.groups())
        return _stepped(setting, item, start, end, kind(1 if end >= start else -1), kind)
    if match := stepped.match(item):
        return _stepped(setting, item, *(_number(setting, item, group, kind) for group in match.groups()), kind)
    if match := counted.match(item):
        start, end = _number(setting, item, match.group(1), kind), _number(setting, item, match.group(2), kind)
        count = _number(setting, item, match.group(3), int)
        if count < 1:
            raise InvalidRequest(f"The {setting.label} axis value {shown(item)} asks for {count} values; use [1] or more.")
        if count > MAX_VALUES_PER_AXIS:
            raise InvalidRequest(f"The {setting.label} axis value {shown(item)} asks for {count} values; at most {MAX_VALUES_PER_AXIS} fit on an axis.")
        spaced = [start + (end - start) * i / (count - 1) for i in range(count)] if count > 1 else [start]
        return _dedupe([round(v) for v in spaced]) if kind is int else [_tidy(v) for v in spaced]
    try:
        kind(item[:64])  # the kind of value, from a bounded prefix: int() of 5000 digits is itself an error
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise InvalidRequest(
            f"The {setting.label} axis value {shown(item)} is not {what} or a range (forms: 10,20,30 · 1-5 · 1-9 (+2) · 0.5-1 [3])."
        ) from None
    return [_number(setting, item, item, kind)]


def _number(setting: Setting, item: str, text: str, kind: type):
    """One number of an item, finite and within ±MAX_NUMBER (so steps and counts stay computable)."""
    try:
        number = kind(text) if len(text.strip()) <= 32 else None
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or abs(number) > MAX_NUMBER:
        raise InvalidRequest(f"The {setting.label} axis value {shown(item)} is out of range: numbers must be finite, "
                             f"between -{MAX_NUMBER:,} and {MAX_NUMBER:,}.")
    return number


def _stepped(setting: Setting, item: str, start, end, step, kind: type) -> list:
    """start, start+step, ... up to and including end (within float rounding)."""
    if step == 0:
        raise InvalidRequest(f"The {setting.label} axis value {shown(item)} has a step of 0.")
    if (end - start) * step < 0:
        raise InvalidRequest(f"The {setting.label} axis value {shown(item)} steps away from its end; use a {'negative' if end < start else 'positive'} step.")
    count = int(math.floor((end - start) / step + 1e-9)) + 1
    if count > MAX_VALUES_PER_AXIS:
        raise InvalidRequest(f"The {setting.label} axis value {shown(item)} gives {count} values; at most {MAX_VALUES_PER_AXIS} fit on an axis.")
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
    return {"int": "10,20,30 or 1-9 (+2)", "float": "0.5-1 [3]", "bool": "on, off", "size": "512x512, 768x512", "search_replace": "dog, cat, fox",
            "order": "red, big, at dusk"}.get(
        setting.kind, ", ".join(setting.choices[:2]) if setting.choices else "a, b")
