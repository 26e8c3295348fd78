"""img2img, inpainting, hires fix and face detailer options as the command line and the A1111 API
name them, turned into GenerationRequest's values: one reading of each name, shared by both.

    resize_mode_name("crop")            -> "Crop and resize"     (also 1, "1", "Crop and resize")
    masked_content_name(2)              -> "latent noise"        (A1111's inpainting_fill order)
    find_upscaler(models_dir, "lanczos") -> "Lanczos"            (InvalidRequest listing the choices otherwise)

Names are matched without regard to case, spaces, hyphens or underscores.
"""
from __future__ import annotations

from pathlib import Path

from pipelines.choices import MASKED_CONTENT, RESIZE_MODES
from pipelines.errors import InvalidRequest
from pipelines.request import shown
from pipelines.upscale import LATENT, list_upscalers

# Short names for the command line; A1111's numbers and our full names work everywhere.
RESIZE_ALIASES = {"just": 0, "resize": 0, "stretch": 0, "crop": 1, "fill": 2, "pad": 2}
CONTENT_ALIASES = {"noise": 2, "nothing": 3, "zeros": 3}
A1111_LATENT_MODES = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)", "Latent (nearest)",
                      "Latent (nearest-exact)")


def _key(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _pick(value, names: tuple[str, ...], aliases: dict[str, int], what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(names):
            return names[value]
    elif isinstance(value, str):
        key = _key(value)
        for index, name in enumerate(names):
            if key in (_key(name), str(index)):
                return name
        if key in aliases:
            return names[aliases[key]]
    numbered = ", ".join(f"{i} = {name}" for i, name in enumerate(names))
    raise InvalidRequest(f"{what} must be one of {numbered}; got {shown(value)}.")


def resize_mode_name(value) -> str:
    """A resize mode from A1111's number (0-2), our name, or a short name (just, crop, fill)."""
    return _pick(value, RESIZE_MODES, RESIZE_ALIASES, "Resize mode")


def masked_content_name(value) -> str:
    """Masked content from A1111's `inpainting_fill` number (0-3) or its name (fill, original, latent noise, latent nothing)."""
    return _pick(value, MASKED_CONTENT, CONTENT_ALIASES, "Masked content")


def find_upscaler(models_dir: Path, name, allow_pickle: bool = False) -> tuple[str, str | None]:
    """The hires upscaler's canonical name for `name`, and a note when it was read as another
    (A1111's latent variants run as Latent; A1111's "None" is a plain Lanczos resize).
    InvalidRequest listing the choices for an unknown name or an unusable file."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest(f"The hires upscaler must be a name, got {shown(name)}.")
    choices = list_upscalers(Path(models_dir), allow_pickle)
    key = _key(name)
    for choice in choices:
        if _key(choice.name) == key:
            if not choice.usable:
                raise InvalidRequest(f"Hires upscaler {choice.name!r} cannot be used: {choice.problem}")
            return choice.name, None
    if name.strip() in A1111_LATENT_MODES:
        return LATENT, f"Hires upscaler {name.strip()} runs as Latent in Likeness (one latent upscale mode)."
    if key == "none":
        return "Lanczos", "Hires upscaler None: the first pass is resized with Lanczos, as A1111 does without an upscaler."
    usable = ", ".join(c.name for c in choices if c.usable)
    raise InvalidRequest(f"No hires upscaler named {shown(name)}; choose one of: {usable} "
                         f"(ESRGAN files go in {Path(models_dir) / 'ESRGAN'}).")
