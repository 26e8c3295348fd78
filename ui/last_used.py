"""The Generate form's last-used values (settings.last_generation), checked before the form shows them.

The settings file is written by the app but can be edited, copied from another machine or damaged: a
value the form cannot show (a seed of 1e30, steps as text, a sampler of another family) is dropped
with a message, never allowed to stop the app from starting.
"""
from __future__ import annotations

import dataclasses
import logging

from pipelines.errors import LikenessError
from pipelines.request import GenerationRequest, validate_request

log = logging.getLogger("likeness")
# Not restored into the form: `save` is not a form field; `vae_dtype` starts from the Settings default
# (see the Generate tab's VAE precision radio).
NOT_RESTORED = ("save", "vae_dtype")
RESTORED = tuple(f.name for f in dataclasses.fields(GenerationRequest) if f.name not in NOT_RESTORED)


# Gradio's own clients mark their calls: gradio_client with `x-gradio-user: api`, Gradio's MCP server with `mcp`.
API_CLIENTS = frozenset({"api", "mcp"})


def started_on_a_page(request) -> bool:
    """Whether a run came from a browser page (or a direct call, no request): only those become the last-used
    values. A script driving the Gradio API would otherwise decide what the form shows at the next start."""
    headers = getattr(request, "headers", None) or {}
    return headers.get("x-gradio-user") not in API_CLIENTS


def remember_last_generation(settings, request, generation_request) -> bool:
    """Make a run the form's last-used values when it came from a page (`started_on_a_page`); True when it did."""
    if not started_on_a_page(request):
        return False
    settings.last_generation = dataclasses.asdict(generation_request)
    return True


def clean_last_generation(manager, last) -> tuple[dict, list[str]]:
    """The usable last-used values and one line per dropped value (unknown keys are dropped silently)."""
    if not isinstance(last, dict):
        return {}, []
    usable = {entry.name for entry in manager.models() if entry.usable}
    model = last.get("model") if last.get("model") in usable else manager.default_model()
    family = manager.entry(model).family
    spec = family.spec
    baseline = GenerationRequest(model=model, prompt="", steps=spec.default_steps, cfg_scale=spec.default_cfg,
                                 width=spec.default_size[0], height=spec.default_size[1], sampler=spec.default_sampler)
    cleaned = {"model": model} if "model" in last else {}
    problems = []
    for name, value in last.items():
        if name == "model":
            continue
        if name not in RESTORED:
            log.debug("last-used value %r ignored: not a form field", name)
            continue
        # A schedule type is checked with the sampler it was used with (Karras is fine with DPM++ 2M, not with DDIM).
        together = {"sampler": cleaned.get("sampler", baseline.sampler)} if name == "schedule_type" else {}
        try:
            validate_request(dataclasses.replace(baseline, **together, **{name: value}), family)
        except (LikenessError, TypeError, ValueError) as error:
            problems.append(f"{name} {_short(value)} ({error})")
            continue
        cleaned[name] = value
    return cleaned, problems


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…"


def vae_rule_info(default: str, auto_brief: str) -> str:
    """The VAE precision radio's hint, one short sentence: where its value comes from, what auto means here."""
    return f"Default from Settings: {default} (not last-used); auto is {auto_brief}."
