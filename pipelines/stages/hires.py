"""The hires fix: A1111's txt2img "Hires. fix" as one stage ("hires pass") between the denoise and the decode.

The first pass's picture is made larger and denoised again at the larger size, with its own steps and
denoising strength: the detail a small first pass cannot hold, without the doubled faces a large first
pass makes. Two ways to make it larger, as A1111 has them:

- "Latent": the first pass's latents resized with A1111's latent mode (`latent_upscale_modes["Latent"]`:
  bilinear, no antialias). No VAE round trip, but the resized latents are soft: it wants a denoising
  strength of about 0.5 or more.
- an image upscaler ("Lanczos", "Nearest", or an ESRGAN file in models/ESRGAN/): the first pass is decoded
  and the picture upscaled (`pipelines.upscale`), then encoded again; decode and encode follow the VAE
  precision policy (NaN re-run in fp32, tiles on out-of-memory, Settings' always-tile).

The second denoise is diffusers' img2img on the loaded modules (`img2img_denoise`), so every hook (LoRA,
PuLID, DeepCache, block caches) applies to it as well. Like img2img it runs the last
`int(hires steps x strength)` steps of a `hires steps`-step schedule (A1111 instead stretches the schedule
so that all the hires steps run); the readout counts them after the first pass's steps.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.generate import decode_latents, spatial_latents
from pipelines.lora.tags import lora_refs
from pipelines.prompts.schedule import has_editing
from pipelines.request import hires_on, hires_size
from pipelines.samplers import find_sampler
from pipelines.stages.denoise import img2img_denoise, stopped
from pipelines.stages.init_image import encode_pixels, packed
from pipelines.stages.prepare import encode_schedule
from pipelines.upscale import UpscalerChoice, find_upscaler, upscale_image

LATENT_MODE = {"mode": "bilinear", "antialias": False}  # A1111's "Latent"


class _Interrupted(Exception):
    """Stop or Skip pressed while an ESRGAN net upscales (raised from its tile progress callback)."""


def hires_steps(request) -> int:
    """Steps the hires pass runs: the last `int(n * strength)` of an n-step schedule (n = Hires steps, or Steps)."""
    if not hires_on(request):
        return 0
    total = request.hires_steps or request.steps
    return min(int(total * request.hires_denoising), total)


def check_hires(request, models_dir: Path, allow_pickle: bool = False) -> None:
    """Before the model loads: the upscaler exists and its file is usable (the size was validated with the request)."""
    if hires_on(request):
        find_upscaler(request.hires_upscaler, models_dir, allow_pickle)


def upscale_latents(latents: torch.Tensor, width: int, height: int, vae_scale_factor: int) -> torch.Tensor:
    """(B, C, h, w) latents to the latent grid of `width` x `height`, as A1111's "Latent" upscaler."""
    size = (height // vae_scale_factor, width // vae_scale_factor)
    return F.interpolate(latents.float(), size=size, **LATENT_MODE).to(latents.dtype)


def hires_infotext(request, upscaler: str) -> dict:
    """The keys A1111 writes: `Hires prompt` / `Hires negative prompt`, `Hires steps`, `Hires sampler` and `Hires schedule
    type` (only when set), `Hires upscale`, `Hires upscaler`, `Denoising strength`."""
    return {
        "Denoising strength": f"{request.hires_denoising:g}",
        "Hires prompt": request.hires_prompt or None,  # A1111 writes them only when they differ from the main prompts
        "Hires negative prompt": request.hires_negative_prompt or None,
        "Hires upscale": f"{request.hires_scale:g}",
        "Hires steps": request.hires_steps or None,
        "Hires upscaler": upscaler,
        "Hires sampler": request.hires_sampler or None,  # only when it differs from the first pass's, as A1111
        "Hires schedule type": request.hires_schedule_type or None,
    }


def hires_scheduler(model, request):
    """The hires pass's own scheduler when it has another sampler or schedule type (validation leaves "" where it runs as
    the first pass did); None to run on the first pass's."""
    if not (request.hires_sampler or request.hires_schedule_type):
        return None
    sampler = find_sampler(model.family, request.hires_sampler or request.sampler)
    return sampler.make(model.base_scheduler_config, request.hires_schedule_type or request.schedule_type, model.family)



def hires_lora_refs(request, main_refs: list) -> list | None:
    """The LoRAs the hires pass runs with when its prompt names another set than the main prompt's (A1111 activates
    the hires prompt's extra networks for the second pass); None when it runs the first pass's (no hires prompt, hires
    fix off, or the same tags)."""
    if not hires_on(request) or not request.hires_prompt:
        return None
    refs = lora_refs(request.hires_prompt)
    return None if refs == main_refs else refs

class HiresPass:
    """Upscale the batch's first pass (latents or picture) and denoise it again at the larger size."""

    name = "hires pass"

    def __init__(self, models_dir: Path, allow_pickle: bool = False) -> None:
        self.models_dir, self.allow_pickle = Path(models_dir), allow_pickle

    def wanted(self, plan) -> bool:
        return hires_on(plan.request)

    def run(self, plan, state, info: dict) -> None:
        model, request = plan.model, plan.request
        first = (state.width, state.height)
        width, height = hires_size(*first, request.hires_scale, model.family.spec.size_multiple)
        choice = find_upscaler(request.hires_upscaler, self.models_dir, self.allow_pickle)
        if choice.kind == "latent":
            init = upscale_latents(spatial_latents(model, state.latents, first[1], first[0]), width, height, model.pipe.vae_scale_factor)
        else:
            init = self._upscaled_picture(plan, state, choice, width, height)
            if init is None:  # Skip pressed while upscaling
                return
        state.width, state.height = width, height
        state.context.width, state.context.height = width, height
        total, steps = request.hires_steps or request.steps, hires_steps(request)
        if steps == 0:  # strength 0 (or too small for one step): the upscaled first pass itself
            state.latents = packed(model, init)
        else:
            first_steps = plan.steps_per_batch - steps  # 0 in a second plan: its batches run the hires pass alone
            swap = plan.options.pass_loras["hires"].swapped(model.pipe) if "hires" in plan.options.pass_loras else nullcontext()
            with swap:  # the hires prompt's own LoRAs, for its text encode and the pass
                state.latents = img2img_denoise(plan, state, init, width=width, height=height, strength=request.hires_denoising,
                                                steps=total, step_offset=plan.batch_step_offset(state.batch_index) + first_steps,
                                                prompt=self._prompt(plan, state, total), scheduler=hires_scheduler(model, request))
        state.batch_extra |= hires_infotext(request, choice.name)
        if plan.first_model is not None and plan.resume_at is None:  # A1111's key (the checkpoint's name and short hash); not a refiner's
            state.batch_extra["Hires checkpoint"] = f"{model.name} [{model.model_hash}]" if model.model_hash else model.name
        own = " ".join(filter(None, (request.hires_sampler, request.hires_schedule_type)))
        info["detail"] = ((f"on {model.name}, " if plan.first_model is not None else "") +
                          f"{request.hires_scale:g}x {choice.name}, {first[0]}x{first[1]} -> {width}x{height} px, "
                          f"{steps} of {total} steps (strength {request.hires_denoising:g})" + (f", {own}" if own else ""))
        stopped(plan, state)  # Stop raises; Skip ends the batch here (no decode)

    def _prompt(self, plan, state, total: int):
        """The pass's prompts: the hires prompts where given, else the main ones (None: as the first pass read them);
        with prompt editing, their hires schedule (A1111 counts a step number from the first pass's start and a fraction
        from 1 to 2 across the hires pass)."""
        request = plan.request
        prompt, negative = request.hires_prompt or request.prompt, request.hires_negative_prompt or request.negative_prompt
        own = bool(request.hires_prompt or request.hires_negative_prompt)
        if not own and not has_editing(prompt, negative):
            return None
        warnings: list[str] = []
        encoded, _note, _used = encode_schedule(plan, prompt, negative, total, len(state.seeds), first_pass_steps=request.steps,
                                                warn=warnings if own else None)
        for text in warnings:
            state.warn(plan.bus, f"Hires prompt: {text}")
        return encoded

    def _upscaled_picture(self, plan, state, choice: UpscalerChoice, width: int, height: int) -> torch.Tensor | None:
        """Decode the first pass (a split run's first plan did, on its model), upscale each picture, encode them again:
        (B, C, h, w) latents, unpacked."""
        model, options = plan.model, plan.options
        pictures = state.first_pictures if state.first_pictures is not None else decode_first_pass(plan, state)

        def on_tile(_done: int, _total: int) -> None:
            if options.cancel.interrupt_requested:
                raise _Interrupted

        dtype = torch.float16 if model.device.type == "cuda" else torch.float32  # ESRGAN re-runs in fp32 on overflow
        scale = max(width / state.width, height / state.height)
        try:
            upscaled = [upscale_image(picture, scale, choice.name, self.models_dir, model.device, dtype, allow_pickle=self.allow_pickle,
                                      progress=on_tile if choice.kind == "esrgan" else None) for picture in pictures]
        except _Interrupted:
            stopped(plan, state)  # Stop raises; Skip ends the batch
            state.skip_rest = True
            return None
        upscaled = [p if p.size == (width, height) else p.resize((width, height), Image.Resampling.LANCZOS) for p in upscaled]
        latents, encoded = encode_pixels(model, upscaled, options.vae)
        for note in encoded.notes:
            state.warn(plan.bus, note)
        return latents


def decode_first_pass(plan, state) -> list[Image.Image]:
    """The batch's first-pass pictures, decoded under the VAE policy (its notes are the run's warnings)."""
    pictures, decoded = decode_latents(plan.model, state.latents, state.height, state.width, plan.options.vae)
    for note in decoded.notes:
        state.warn(plan.bus, note)
    return pictures


class FirstPassDecode:
    """A split run's first plan (the hires pass on another checkpoint) ends by decoding the first pass when an image
    upscaler makes it larger: with the first model's VAE, as A1111 decodes before it loads the hires checkpoint."""

    name = "first-pass decode"

    def __init__(self, needed: bool) -> None:
        self.needed = needed  # an image upscaler (the latent one resizes the latents themselves)

    def wanted(self, plan) -> bool:
        return self.needed

    def run(self, plan, state, info: dict) -> None:
        state.first_pictures = decode_first_pass(plan, state)
        info["detail"] = f"for the {plan.request.hires_upscaler} upscaler, on {plan.model.name}'s VAE"
