"""Prompt editing inside diffusers' loop: the denoiser reads each step's own prompt.

diffusers' pipelines encode the prompt once, before the loop; A1111's `[from:to:when]` and `[a|b]`
change it during the loop. This hook attaches to the denoiser (UNet or FLUX transformer) for one
pass with the pass's segments (pipelines.prompts.schedule) already encoded, and before each call
whose step falls in a later segment puts that segment's conditioning in the call's arguments:

- SD 1.5 / SDXL: `encoder_hidden_states` (and SDXL's pooled `text_embeds`), built as the pipeline
  builds them: negative rows then positive rows when classifier-free guidance batches both.
- FLUX.1: `encoder_hidden_states` and `pooled_projections`; with true CFG the second call of a step
  is the negative one (FluxPipeline calls the positive first).

The first segment is what the pipeline was given, so its steps run untouched. A forward pre-hook,
prepended, so PuLID's and the caches' hooks see the step's prompt; removing it leaves the module as
it was. The step is `HookContext.step_index` minus the pass's first step (each pass counts from 0).
"""
from __future__ import annotations

import torch

from pipelines.hooks.base import HookContext

PROMPT_SCHEDULE_HOOK = "prompt_schedule"


class PromptScheduleHook:
    name = PROMPT_SCHEDULE_HOOK

    def __init__(self, segments: list[tuple[int, dict]], first_step: int, flux: bool):
        """`segments`: (last_step, pipeline keyword arguments of the encoded prompt) in step order."""
        if len(segments) < 2:
            raise ValueError("a prompt schedule needs at least two segments")
        self.segments = segments
        self.first_step = first_step
        self.flux = flux
        self._handle = None
        self._context: HookContext | None = None
        self._calls: tuple[int, int] = (-1, 0)  # (step, calls seen at it): FLUX's second call is the negative one
        self.swapped = 0  # calls that read a later segment's prompt

    def attach(self, pipe, context: HookContext) -> None:
        if self._handle is not None:
            raise RuntimeError("PromptScheduleHook is already attached; detach it first (pipelines.hooks.attached does).")
        self._context = context
        denoiser = pipe.transformer if self.flux else pipe.unet
        self._handle = denoiser.register_forward_pre_hook(self._before_call, with_kwargs=True, prepend=True)

    def detach(self, pipe) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = self._context = None
        self._calls = (-1, 0)

    def segment_at(self, step: int) -> int:
        for index, (last_step, _embeds) in enumerate(self.segments):
            if step <= last_step:
                return index
        return len(self.segments) - 1

    def _before_call(self, module, args, kwargs):
        step = self._context.step_index - self.first_step
        calls = self._calls[1] + 1 if self._calls[0] == step else 1
        self._calls = (step, calls)
        index = self.segment_at(step)
        if index == 0:
            return None
        embeds = self.segments[index][1]
        kwargs = dict(kwargs)
        if self.flux:
            negative = calls > 1 and embeds.get("negative_prompt_embeds") is not None
            prefix = "negative_" if negative else ""
            kwargs["encoder_hidden_states"] = embeds[f"{prefix}prompt_embeds"]
            kwargs["pooled_projections"] = embeds[f"{prefix}pooled_prompt_embeds"]
        else:
            rows = kwargs["encoder_hidden_states"].shape[0]
            kwargs["encoder_hidden_states"] = _as_called(embeds, "prompt_embeds", rows)
            added = kwargs.get("added_cond_kwargs")
            if added and "text_embeds" in added and embeds.get("pooled_prompt_embeds") is not None:
                kwargs["added_cond_kwargs"] = {**added, "text_embeds": _as_called(embeds, "pooled_prompt_embeds", rows)}
        self.swapped += 1
        return args, kwargs


def _as_called(embeds: dict, name: str, rows: int) -> torch.Tensor:
    """The positive tensor, or negative then positive rows when the call batches both (CFG)."""
    positive = embeds[name]
    if rows == positive.shape[0]:
        return positive
    return torch.cat([embeds[f"negative_{name}"], positive])
