"""The denoise stage: the sampler's loop for one batch, or its result from the exact-repeat or the
approximate latent cache; the per-step callback drives the readout, the preview and Stop/Skip."""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from pipelines.caches.approximate_run import ApproximateRun, Resume, resumed_from
from pipelines.errors import GenerationCancelled
from pipelines.families import Family
from pipelines.generate import uses_true_cfg
from pipelines.hooks import attached, hook_cache_keys
from pipelines.preview.live import render_preview
from pipelines.request import conditioning_key, starts_from_init_image
from pipelines.samplers import seed_step_noise
from pipelines.stages.prepare import EncodedPrompt
from pipelines.telemetry import Notice, PreviewReady
from pipelines.vae_files import OWN_VAE


def exact_repeat_key(model, request, seeds: list[int], hooks: list, init_key: tuple = (), subseeds: list = ()):
    """Everything that determines the final latents; None when a hook cannot say what it changes. `subseeds`: the
    batch's variation seeds (read only when the request has a variation strength)."""
    hook_keys = hook_cache_keys(hooks)
    if hook_keys is None:
        return None
    # The namespace too: one user's repeat is never served from another user's run (nor its timing).
    key = (model.identity, request.prompt, request.negative_prompt, request.steps, request.cfg_scale, request.sampler, request.schedule_type,
           request.width, request.height, tuple(seeds), hook_keys, getattr(request, "cache_namespace", ""))
    key += (init_key,) if init_key else ()
    key += (("vae", request.vae),) if init_key and request.vae not in OWN_VAE else ()  # it encoded the init image
    key += conditioning_key(request)
    key += (("seed resize", request.seed_resize_from_w, request.seed_resize_from_h),) if seed_resized(request) else ()
    return key + ((("variation", tuple(subseeds), request.subseed_strength),) if request.subseed_strength > 0 else ())


class Denoise:
    name = "denoise"

    def __init__(self) -> None:
        self._approximate: ApproximateRun | None = None  # one per generation: made at the first batch

    def wanted(self, plan) -> bool:
        return True

    def run(self, plan, state, info: dict) -> None:
        model, request, options = plan.model, plan.request, plan.options
        init_key = state.init.key if state.init is not None else ()
        key = exact_repeat_key(model, request, state.seeds, options.hooks, init_key, state.subseeds) if options.latent_cache is not None else None
        cached = options.latent_cache.get(key) if key is not None else None
        if cached is not None:
            state.latents = cached.to(model.device)
            info["detail"] = state.cache_notes["latent cache"] = "hit: denoising skipped"
            options.infotext_extra.pop("Approx cache", None)  # an earlier batch's note does not describe this one
            return
        if options.approximate_cache is not None and self._approximate is None:
            self._approximate = ApproximateRun(options.approximate_cache, model, request, state.embeds, options.hooks, state.inversions)
        approximate = self._approximate
        start = time.perf_counter()
        resume = approximate.before_batch() if approximate else None
        state.latents, info["detail"] = denoise_from_init(plan, state) if starts_from_init(plan) else \
            (denoise_batch(plan, state, resume, stop_after=plan.stop_after), handover_note(plan))
        if approximate:
            info["detail"] = state.cache_notes["approx cache"] = options.infotext_extra["Approx cache"] = approximate.note(resume)
        if stopped(plan, state):
            return
        seconds = time.perf_counter() - start
        if key is not None and not (resume and resume.hit):  # an approximate result is no exact repeat
            options.latent_cache.put(key, state.latents.detach().to("cpu"), seconds)
            state.cache_notes.setdefault("latent cache", "miss")
        if approximate:
            approximate.after_batch(resume, seconds)


def stopped(plan, state) -> bool:
    """Stop raises (with the images so far); Skip ends this batch: True, and no later stage runs for it."""
    cancel = plan.options.cancel
    if cancel.cancelled:
        raise GenerationCancelled(partial=state.images)
    if cancel.take_skip():
        plan.bus.publish(Notice(f"Skipped batch {state.batch_index + 1} of {plan.request.batch_count}."))
        state.skip_rest = True
        return True
    return False


def step_callback(plan, state, step_offset: int, start_step: int = 0, resume: Resume | None = None, total: int | None = None,
                  stop_after: int | None = None):
    """diffusers' callback_on_step_end: readout, hook step index, preview, Stop/Skip; with `stop_after` the pipeline's
    loop ends after that step of the full schedule (a refiner takes over there): its latents are returned as they are."""
    request, options = plan.request, plan.options
    total = total or request.steps
    completed = [0]  # sampler steps this pass has finished

    def on_step_end(pipeline, step_index, _timestep, tensors):
        if not step_finished(pipeline, step_index):
            return tensors  # the first of a second-order step's two denoiser calls: the step is not done yet
        completed[0] += 1
        done = start_step + completed[0]  # steps completed in the full schedule
        state.context.step_index = done
        state.step_clock.step_done(step_offset + done)
        if resume:
            resume.on_step(done, tensors["latents"])
        if options.preview_every and done % options.preview_every == 0 and done < total:
            image = render_preview(options.live_preview, plan.model, tensors["latents"], state.height, state.width, plan.bus.publish)
            plan.bus.publish(PreviewReady(step_offset + done, image))
        if options.cancel.interrupt_requested or (stop_after is not None and done >= stop_after):
            pipeline._interrupt = True  # diffusers skips the remaining steps
        return tensors

    return on_step_end


def step_finished(pipeline, call_index: int) -> bool:
    """Whether diffusers' loop call `call_index` ended a sampler step. A second-order scheduler (Heun, DPM2, DPM++ SDE)
    takes two calls a step and says when it is half way (`state_in_first_order` False); its last step is a single
    call, the loop's last."""
    if getattr(pipeline.scheduler, "state_in_first_order", True):
        return True
    return call_index == getattr(pipeline, "num_timesteps", 0) - 1


def starts_from_init(plan) -> bool:
    return starts_from_init_image(plan.request)


def denoise_from_init(plan, state) -> tuple[torch.Tensor, str]:
    """img2img / inpaint: the last `int(steps * strength)` steps of the schedule, from the init latents."""
    from pipelines.stages.init_image import denoise_steps, packed

    request, init = plan.request, state.init
    steps = denoise_steps(request)
    if steps == 0:  # strength 0 (or too small for one step): the image itself, after the VAE round trip
        return packed(plan.model, init.latents.repeat(len(state.seeds), 1, 1, 1)), "strength 0: no denoising"
    latents = img2img_denoise(plan, state, init.latents, width=request.width, height=request.height, strength=request.denoising_strength,
                              steps=request.steps, step_offset=plan.batch_step_offset(state.batch_index),
                              mask=init.mask if request.mask is not None else None,
                              masked_latents=init.masked_latents if init.masked_latents is not None else init.latents,
                              stop_after=plan.stop_after)
    return latents, f"{request.mode}: {steps} of {request.steps} steps (strength {request.denoising_strength:g})" + \
        (f", {handover_note(plan)}" if plan.stop_after is not None else "")


def handover_note(plan) -> str:
    """The first plan's denoise with a refiner: where it hands over ("" without one)."""
    return f"the refiner takes over after step {plan.stop_after}" if plan.stop_after is not None else ""


def img2img_denoise(plan, state, init_latents: torch.Tensor, *, width: int, height: int, strength: float, steps: int, step_offset: int,
                    mask=None, masked_latents: torch.Tensor | None = None, prompt=None, scheduler=None, seed_noise: bool = True,
                    stop_after: int | None = None) -> torch.Tensor:
    """The last `int(steps * strength)` steps of a `steps`-step schedule from `init_latents` ((1 or B, C, h, w),
    pipeline convention, unpacked) at `width` x `height`, with diffusers' img2img or (with `mask`) inpaint
    pipeline on the loaded modules. `step_offset` is the readout's step count before this pass; `prompt` the
    pass's EncodedPrompt (default: the main pass's). Used by img2img, inpainting, the hires pass and the face
    detailer. Returns the denoiser's latents (FLUX packed). With prompt editing, the pass counts its steps from
    0 (the steps it runs, as A1111's img2img does). `scheduler`: the pass's own (the hires sampler), else the loaded one.
    `seed_noise`: the noise follows the variation seed and Resize seed from (A1111's img2img and hires pass; not the
    face detailer's crops). `stop_after`: the step of the schedule after which a refiner takes over."""
    from pipelines.stages.init_image import refine_pipeline

    model, request, options = plan.model, plan.request, plan.options
    batch = len(state.seeds)

    def batched(latents: torch.Tensor) -> torch.Tensor:
        return latents if latents.shape[0] == batch else latents.repeat(batch, 1, 1, 1)

    extra = {}
    if mask is not None:
        extra = {"mask_image": mask, "masked_image_latents": batched(masked_latents if masked_latents is not None else init_latents)}
    if uses_true_cfg(model, options):
        extra["true_cfg_scale"] = options.true_cfg_scale
    skipped = steps - min(int(steps * strength), steps)
    state.context.step_index = skipped
    prompt = prompt or pass_prompt(state)
    pipe = refine_pipeline(model, mask is not None)
    if scheduler is not None:
        pipe.scheduler = scheduler  # this pass's pipeline only: the loaded pipeline keeps the first pass's
    seed_step_noise(pipe.scheduler, state.seeds)
    noise = start_noise(plan, state, generators(state.seeds)) if seed_noise and varies_noise(plan) else None
    if noise is not None and mask is not None and strength >= 1:
        extra["latents"] = noise  # inpainting from pure noise takes it as its starting latents (diffusers' own rule)
    with attached(model.pipe, prompt.hooks(plan, first_step=skipped), state.context), noise_replaced(model, pipe.scheduler, noise):
        return pipe(
            **prompt.embeds,
            image=batched(init_latents),
            strength=strength,
            num_inference_steps=steps,
            guidance_scale=request.cfg_scale,
            height=height,
            width=width,
            generator=generators(state.seeds),
            output_type="latent",
            callback_on_step_end=step_callback(plan, state, step_offset - skipped, skipped, total=steps, stop_after=stop_after),
            callback_on_step_end_tensor_inputs=["latents"],
            **extra,
        ).images


def pass_prompt(state) -> EncodedPrompt:
    """The main pass's EncodedPrompt (a state built without the text encode stage: its embeds, no editing)."""
    return state.prompt if state.prompt is not None else EncodedPrompt(state.embeds)


def fresh_generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [fresh_generator(seed) for seed in seeds]


def slerp(strength: float, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """The point `strength` of the way from `start` to `end` along the great circle (both one image's noise): a
    noise of the same spread at every strength, where a straight mix would shrink it half way."""
    a, b = start.flatten().double(), end.flatten().double()
    cosine = torch.clamp(torch.dot(a, b) / (a.norm() * b.norm()), -1.0, 1.0)
    angle = torch.acos(cosine)
    if angle.abs() < 1e-4:  # the same direction: nothing to turn through
        mixed = (1 - strength) * a + strength * b
    else:
        mixed = (torch.sin((1 - strength) * angle) * a + torch.sin(strength * angle) * b) / torch.sin(angle)
    return mixed.reshape(start.shape).to(start.dtype)


def varies_noise(plan) -> bool:
    """The variation seed or Resize seed from shape this run's noise (validation turns both off for FLUX.1)."""
    return plan.request.subseed_strength > 0 or seed_resized(plan.request)


@contextmanager
def noise_replaced(model, scheduler, noise: torch.Tensor | None):
    """diffusers' img2img and inpaint pipelines draw their noise from the generators and hand it to the scheduler's
    `add_noise` (FLUX.1's flow matching: `scale_noise`), once to start and at every step for inpainting's kept area:
    there `noise`, the variation seed's, is used instead, the same tensor each time (packed where the pipeline passes
    FLUX's packed noise). The pipeline's own draw still happens, so the generators then go on to the sampler's step
    noise exactly as without it. Instance attributes, removed after (another one put back)."""
    from pipelines.stages.init_image import packed

    name = "scale_noise" if model.family is Family.FLUX else "add_noise"
    if noise is None:
        yield
        return
    previous = scheduler.__dict__.get(name)
    own = getattr(type(scheduler), name).__get__(scheduler) if previous is None else previous
    shapes = {tuple(noise.shape): noise}
    if model.family is Family.FLUX:
        shapes[tuple(packed(model, noise).shape)] = packed(model, noise)

    def with_our_noise(sample, timestep, pipeline_noise):
        ours = shapes.get(tuple(pipeline_noise.shape), noise)
        return own(sample, timestep, ours.to(pipeline_noise.device, pipeline_noise.dtype)) if name == "scale_noise" else \
            own(sample, ours.to(pipeline_noise.device, pipeline_noise.dtype), timestep)

    def add_noise(original_samples, pipeline_noise, timesteps):
        return with_our_noise(original_samples, timesteps, pipeline_noise)

    def scale_noise(sample, timestep, noise=None):
        return with_our_noise(sample, timestep, noise)

    setattr(scheduler, name, scale_noise if name == "scale_noise" else add_noise)
    try:
        yield
    finally:
        if previous is None:
            delattr(scheduler, name)
        else:
            setattr(scheduler, name, previous)


def seed_resized(request) -> bool:
    """A1111's "Resize seed from" is on (validation leaves (0, 0) where it is off)."""
    return request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0


def centre_placed(noise: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """A1111's placement of a seed's noise drawn at another size: centred in `full` (the picture's size, drawn from the
    same seed, showing around a smaller one); a larger one is cut to its middle. Both (1, C, h, w)."""
    placed = full.clone()
    (rows, cols), (full_rows, full_cols) = noise.shape[-2:], full.shape[-2:]
    dy, dx = (full_rows - rows) // 2, (full_cols - cols) // 2  # floored, as A1111's: an odd excess leaves one more out
    h, w = (rows if dy >= 0 else rows + 2 * dy), (cols if dx >= 0 else cols + 2 * dx)
    to_y, to_x, from_y, from_x = max(dy, 0), max(dx, 0), max(-dy, 0), max(-dx, 0)
    placed[..., to_y:to_y + h, to_x:to_x + w] = noise[..., from_y:from_y + h, from_x:from_x + w]
    return placed


def noise_shape(model, width: int, height: int) -> tuple[int, int, int, int]:
    """One image's noise as diffusers' pipelines draw it (unpacked): SD's VAE latents (an inpainting UNet takes 9
    channels, 4 of them noise); FLUX.1's a multiple of 2 latents a side, before they are packed 2x2."""
    pipe = model.pipe
    scale = pipe.vae_scale_factor
    if model.family is Family.FLUX:
        return 1, pipe.transformer.config.in_channels // 4, 2 * (height // (scale * 2)), 2 * (width // (scale * 2))
    return 1, pipe.vae.config.latent_channels, height // scale, width // scale


def start_noise(plan, state, seed_generators: list[torch.Generator]) -> torch.Tensor:
    """The batch's starting noise with A1111's variation seed and "Resize seed from": each image's seed noise (drawn
    from its generator with diffusers' own `randn_tensor`, as prepare_latents draws it, so the generator then goes on
    to the sampler's noise as usual), at the resize-from size when set, turned toward its subseed's noise (drawn at the
    same size) by the strength, then centred in the picture's noise drawn from the seed again (A1111's order)."""
    from diffusers.utils.torch_utils import randn_tensor

    request = plan.request
    shape = noise_shape(plan.model, state.width, state.height)
    drawn = noise_shape(plan.model, request.seed_resize_from_w, request.seed_resize_from_h) if seed_resized(request) else shape
    dtype = state.embeds["prompt_embeds"].dtype
    noises = []
    for seed, generator, subseed in zip(state.seeds, seed_generators, state.subseeds):
        noise = randn_tensor(drawn, generator=generator, dtype=dtype)
        if request.subseed_strength > 0:
            noise = slerp(request.subseed_strength, noise, randn_tensor(drawn, generator=fresh_generator(subseed), dtype=dtype))
        if drawn != shape:
            noise = centre_placed(noise, randn_tensor(shape, generator=fresh_generator(seed), dtype=dtype))
        noises.append(noise)
    return torch.cat(noises).to(plan.model.device)


def denoise_batch(plan, state, resume: Resume | None = None, stop_after: int | None = None, step_offset: int | None = None) -> torch.Tensor:
    """Run the text-to-image denoiser for one batch.

    With `resume` (the approximate cache, a refiner) the run starts from kept latents after `resume.start_step`
    steps, or keeps its own latents after the steps `resume.keep` names. `stop_after`: the step after which a
    refiner takes over. `step_offset`: the readout's count before step 0 of the schedule (default: the batch's).
    """
    model, request, options = plan.model, plan.request, plan.options
    start_step = resume.start_step if resume else 0
    state.context.step_index = start_step
    start_latents = resume.latents.to(model.device) if resume and resume.latents is not None else None
    seed_generators = generators(state.seeds)
    if start_latents is None and varies_noise(plan):
        from pipelines.stages.init_image import packed

        start_latents = packed(model, start_noise(plan, state, seed_generators))  # FLUX's text-to-image takes them packed
    prompt = pass_prompt(state)  # steps count from 0 of the full schedule: a resumed run's first step is `start_step`
    seed_step_noise(model.pipe.scheduler, state.seeds)
    with resumed_from(model.pipe, start_step), attached(model.pipe, prompt.hooks(plan, first_step=0), state.context):
        return model.pipe(
            **prompt.embeds,
            num_inference_steps=request.steps,
            guidance_scale=request.cfg_scale,
            height=request.height,
            width=request.width,
            generator=seed_generators,
            latents=start_latents,
            output_type="latent",
            callback_on_step_end=step_callback(plan, state, plan.batch_step_offset(state.batch_index) if step_offset is None else step_offset,
                                               start_step, resume, stop_after=stop_after),
            callback_on_step_end_tensor_inputs=["latents"],
            **({"true_cfg_scale": options.true_cfg_scale} if uses_true_cfg(model, options) else {}),
        ).images
