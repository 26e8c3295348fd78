"""A1111's `<lora:name:weight>` prompt tags and the `name:weight` form the CLI and API take."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

MAX_WEIGHT = 10.0
# A1111's extra-network pattern (modules/extra_networks.py) `<(\w+):([^>]+)>`, with `<` also excluded inside:
# a scan from one `<` then stops at the next, so a megabyte of `<a:` stays linear.
TAG_PATTERN = re.compile(r"<(\w+):([^<>]+)>")


@dataclass(frozen=True)
class LoraRef:
    """A LoRA and its weights: `weight` on the text encoders, and on the denoiser too unless `unet_weight` says
    otherwise (A1111's `<lora:name:te:unet>`, `te=`, `unet=`)."""

    name: str
    weight: float = 1.0
    unet_weight: float | None = None

    @property
    def denoiser_weight(self) -> float:
        return self.weight if self.unet_weight is None else self.unet_weight


class LoraSyntaxError(ValueError):
    """A tag or `name:weight` that cannot be read; the message names it."""


def parse_weight(text: str, source: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise LoraSyntaxError(f"The LoRA weight in {source} must be a number, got {text.strip()!r}.") from None
    if not math.isfinite(weight) or abs(weight) > MAX_WEIGHT:
        raise LoraSyntaxError(f"The LoRA weight in {source} must be between -{MAX_WEIGHT:g} and {MAX_WEIGHT:g}, got {text.strip()}.")
    return weight


def extract_lora_tags(prompt: str) -> tuple[str, list[LoraRef]]:
    """(the prompt without its `<lora:...>` tags, the LoRAs they name in order).

    `<lora:name>` is weight 1; `<lora:name:w>` sets w (negative allowed) on the text encoders and the
    denoiser. As in A1111, a second number sets the denoiser's own weight (`<lora:name:1:0.5>`: text
    encoders 1, UNet or FLUX transformer 0.5), and `te=` / `unet=` set either by name; `dyn=`
    (LyCORIS' dynamic rank) has no effect on the LoRAs loaded here. Other extra-network tags
    (`<hypernet:...>`) are left in the prompt untouched.
    """
    refs: list[LoraRef] = []

    def take(match: re.Match) -> str:
        if match.group(1).lower() != "lora":
            return match.group(0)
        parts = match.group(2).split(":")
        name = parts[0].strip()
        if not name:
            raise LoraSyntaxError(f"{match.group(0)} names no LoRA; write <lora:name:weight>.")
        refs.append(_tag_weights(name, parts[1:], match.group(0)))
        return ""

    cleaned = TAG_PATTERN.sub(take, prompt)
    return cleaned, refs


def _tag_weights(name: str, arguments: list[str], tag: str) -> LoraRef:
    """A1111's reading of a tag's arguments: positional text-encoder then UNet weight, `te=` / `unet=` over them."""
    positional = [p for p in arguments if "=" not in p]
    named = {key.strip().lower(): value for key, _, value in (p.partition("=") for p in arguments if "=" in p)}
    unknown = sorted(set(named) - {"te", "unet", "dyn"})
    if unknown:
        raise LoraSyntaxError(f"{tag}: unknown argument {unknown[0]}=; A1111's LoRA tags take te=, unet= (and dyn=).")
    first = parse_weight(positional[0], tag) if positional and positional[0].strip() else 1.0
    unet = parse_weight(positional[1], tag) if len(positional) > 1 and positional[1].strip() else first
    te = parse_weight(named["te"], tag) if "te" in named else first
    unet = parse_weight(named["unet"], tag) if "unet" in named else unet
    return LoraRef(name, te, None if unet == te else unet)


def parse_lora_arg(text: str) -> LoraRef:
    """`name:weight` or `name` (weight 1), from `--lora` or the API's `loras` list. The name may contain ':'
    only when a weight follows (the last ':' splits)."""
    if not isinstance(text, str) or not text.strip():
        raise LoraSyntaxError(f"A LoRA must be given as name:weight, got {text!r}.")
    name, sep, weight = text.strip().rpartition(":")
    if not sep:
        return LoraRef(text.strip(), 1.0)
    if not name.strip():
        raise LoraSyntaxError(f"A LoRA must be given as name:weight, got {text!r}.")
    return LoraRef(name.strip(), parse_weight(weight, f"--lora {text}"))


def lora_refs(prompt: str, extra: tuple | list = ()) -> list[LoraRef]:
    """Every LoRA a request asks for: the prompt's tags, then `extra` (`name:weight` strings or
    (name, weight) pairs). A name given twice keeps its last weight, in its first position."""
    _, refs = extract_lora_tags(prompt)
    for item in extra:
        if isinstance(item, LoraRef):
            refs.append(item)
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
            value = item[1]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise LoraSyntaxError(f"The LoRA weight for {item[0]!r} must be a number, got {value!r}.")
            refs.append(LoraRef(item[0].strip(), parse_weight(str(value), f"the LoRA {item[0]!r}")))
        else:
            refs.append(parse_lora_arg(item))
    merged: dict[str, LoraRef] = {}
    for ref in refs:
        merged[ref.name] = ref
    return list(merged.values())


def infotext_hashes(pairs: list[tuple[str, str]]) -> str:
    """A1111's `Lora hashes` value: `name: hash, name: hash` (quoted by the infotext writer)."""
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {digest}" for name, digest in pairs)


def parse_infotext_hashes(value: str) -> dict[str, str]:
    result = {}
    for part in value.split(","):
        name, sep, digest = part.rpartition(":")
        if sep and name.strip():
            result[name.strip()] = digest.strip()
    return result


def with_lora_tags(prompt: str, loras: list[str] | tuple[str, ...]) -> str:
    """The prompt with `name:weight` items (the CLI's repeatable `--lora`) appended as `<lora:name:weight>` tags,
    so they travel in the prompt as A1111 writes them: into the infotext and back through PNG Info."""
    tags = []
    for item in loras:
        ref = parse_lora_arg(item)
        tags.append(f"<lora:{ref.name}:{ref.weight:g}>")
    return " ".join([prompt, *tags]) if tags else prompt


def reweight_lora_tags(prompt: str, weight: float) -> tuple[str, int]:
    """(the prompt with every `<lora:name...>` tag's weight set to `weight`, how many tags were rewritten).

    The name and A1111's keyword arguments (`te=`, `unet=`) are kept; other extra-network tags are left alone.
    """
    count = 0

    def swap(match: re.Match) -> str:
        nonlocal count
        if match.group(1).lower() != "lora":
            return match.group(0)
        parts = match.group(2).split(":")
        count += 1
        keywords = [p for p in parts[1:] if "=" in p]
        return f"<{match.group(1)}:{':'.join([parts[0], f'{weight:g}', *keywords])}>"

    return TAG_PATTERN.sub(swap, prompt), count
