"""How one generation uses the approximate cache: look up before each batch, resume or keep latents.

Resuming at step K needs the scheduler in the state it had after K steps of the full schedule.
`resuming_scheduler` makes a copy whose `set_timesteps` computes the full schedule for the
request's step count and then drops its first K entries (timesteps and sigmas together, so every
index the scheduler uses, "is this the last step" included, stays consistent), and whose
`init_noise_sigma` is 1: the pipelines multiply given latents by it, and cached latents are already
at step K's noise level. That works for every scheduler here and for SD 1.5, SDXL and FLUX.1 alike
(SDXL and FLUX call `set_begin_index(0)`, which then means "the first remaining step").

Deterministic samplers (Euler, DDIM, flow Euler) resumed on the same prompt reproduce the
uninterrupted run exactly. Multistep solvers (DPM++ 2M, UniPC) restart their history at step K, so
their first resumed step is first order: close, not identical. Ancestral samplers (Euler a) draw
the remaining noise from the new request's seed.
"""
from __future__ import annotations

import copy
import functools
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from pipelines.caches.approximate import ApproximateCache, ApproxHit, keep_steps, partition_key
from pipelines.families import Family
from pipelines.hooks.base import hook_cache_keys
from pipelines.prompts.encode import end_of_text_row
from pipelines.prompts.schedule import has_editing
from pipelines.request import conditioning_key
from pipelines.samplers import find_sampler


@functools.cache
def _resuming_class(base: type) -> type:
    class Resuming(base):
        resume_from = 0  # completed steps to skip, set per instance

        @functools.wraps(base.set_timesteps)  # keeps the signature: pipelines inspect it for `sigmas=`/`timesteps=`
        def set_timesteps(self, *args, **kwargs):
            super().set_timesteps(*args, **kwargs)
            skip = self.resume_from * self.order
            self.timesteps = self.timesteps[skip:]
            if getattr(self, "sigmas", None) is not None:
                self.sigmas = self.sigmas[skip:]

        @property
        def init_noise_sigma(self):
            return 1.0

        @init_noise_sigma.setter
        def init_noise_sigma(self, _value):
            pass  # some schedulers assign it in __init__; the resumed latents are already scaled

    Resuming.__name__ = Resuming.__qualname__ = f"Resuming{base.__name__}"
    Resuming.__module__ = base.__module__  # what the pipeline records in its config while it is swapped in
    return Resuming


def resuming_scheduler(scheduler, start_step: int):
    """A copy of `scheduler` whose schedule starts after `start_step` completed steps."""
    resumed = copy.deepcopy(scheduler)
    resumed.__class__ = _resuming_class(type(scheduler))
    resumed.resume_from = start_step
    return resumed


@contextmanager
def resumed_from(pipe, start_step: int):
    """Swap the pipeline's scheduler for a resuming copy for one call; always puts the original back."""
    if start_step <= 0:
        yield
        return
    original = pipe.scheduler
    pipe.scheduler = resuming_scheduler(original, start_step)
    try:
        yield
    finally:
        pipe.scheduler = original


# Part of every partition: entries kept by a version that compared other vectors (SD 1.5's token mean, before
# 2026-12-05) are never compared with these; they age out of the disk budget.
PROMPT_VECTOR = "CLIP pooled"


def prompt_vector(family: Family, pipe, prompt: str, embeds: dict, embeddings: list = ()) -> torch.Tensor:
    """CLIP's text embedding of the prompt, the vector NIRVANA retrieves by: the pipeline's pooled embedding (SDXL,
    FLUX.1); for SD 1.5, whose pipeline takes no pooled one, the end-of-text token's row of the first chunk, which
    is what CLIPTextModel pools (its `pooler_output`; A1111's emphasis rescales the chunk, not the direction),
    found as the encoder tokenized the prompt (`embeddings`: the textual inversions it names, a row per vector).
    The mean of the prompt's tokens instead ranks prompts that share most of their words ("a <colour> <shape>
    on a <colour> background") as near, whatever they draw: measured on the demo model, README "Demo model"."""
    if family in (Family.SDXL, Family.FLUX) and embeds.get("pooled_prompt_embeds") is not None:
        return embeds["pooled_prompt_embeds"][0].float().cpu()
    tokens = embeds["prompt_embeds"][0].float().cpu()
    row = end_of_text_row(pipe, prompt, embeddings)
    if row is None:
        return tokens.mean(dim=0)
    return tokens[min(row, tokens.shape[0] - 1)]


def request_partition(model, request, hooks: list) -> str | None:
    """Everything that makes another request's latents unusable; None when a hook cannot say what it changes."""
    hook_keys = hook_cache_keys(hooks)
    if hook_keys is None:
        return None
    # A prompt with A1111's prompt editing changes during the run: only the same edited prompt's latents fit.
    edited = (("prompt editing", request.prompt),) if has_editing(request.prompt) else ()
    return partition_key(PROMPT_VECTOR, model.identity, model.family.value, request.width, request.height, request.sampler, request.schedule_type, request.steps,
                         float(request.cfg_scale), request.negative_prompt, request.batch_size, tuple(sorted(hook_keys, key=repr)),
                         *conditioning_key(request), *edited)


@dataclass
class Resume:
    """One batch's plan: where the denoise starts, and after which steps to keep the latents."""

    start_step: int = 0
    latents: torch.Tensor | None = None
    keep: frozenset[int] = frozenset()
    kept: dict[int, torch.Tensor] = field(default_factory=dict)
    hit: ApproxHit | None = None

    def on_step(self, completed: int, latents: torch.Tensor) -> None:
        if completed in self.keep:
            self.kept[completed] = latents.detach().to("cpu", copy=True)


class ApproximateRun:
    """The approximate cache for one generation (all its batches).

    Entries stored by this run are never reused by its own later batches: a batch count asks for
    different images, not near-copies of the first. The request's `cache_namespace` (a user or API
    key; "" = the single-user default) keeps lookups and stores within that namespace.
    """

    def __init__(self, cache: ApproximateCache, model, request, embeds: dict, hooks: list, embeddings: list = ()):
        self.cache = cache
        self.total_steps = request.steps
        # A second-order sampler (Heun, DPM2, DPM++ SDE) keeps half a step in its own state: it cannot resume from
        # latents kept after a step of another run.
        self.second_order = find_sampler(model.family, request.sampler).model_calls > 1
        self.partition = None if self.second_order else request_partition(model, request, hooks)
        self.vector = prompt_vector(model.family, model.pipe, request.prompt, embeds, embeddings) if self.partition else None
        self.namespace = str(getattr(request, "cache_namespace", "") or "")
        self.stored: set[int] = set()

    @property
    def usable(self) -> bool:
        return self.partition is not None and self.total_steps > 1 and not self.cache.unavailable

    def before_batch(self) -> Resume | None:
        if not self.usable:
            return None
        hit = self.cache.lookup(self.partition, self.vector.numpy(), self.total_steps, skip=self.stored, namespace=self.namespace)
        if hit is not None:
            return Resume(start_step=hit.step, latents=hit.latents, hit=hit)
        if self.cache.unavailable:  # the store went away during this lookup: nothing to keep latents for
            return None
        return Resume(keep=frozenset(keep_steps(self.total_steps)))

    def after_batch(self, resume: Resume | None, denoise_seconds: float) -> None:
        """Store a missed batch's kept latents (nothing when it was a hit, or stopped early)."""
        if resume is None or resume.hit is not None or set(resume.kept) != set(resume.keep):
            return
        entry_id = self.cache.store(self.partition, self.vector.numpy(), self.total_steps, resume.kept,
                                    denoise_seconds / max(self.total_steps, 1), namespace=self.namespace)
        if entry_id is not None:
            self.stored.add(entry_id)

    def note(self, resume: Resume | None) -> str:
        if resume is None and self.cache.unavailable:
            return "off for this run (the cache store is unreachable; see the log)"
        if resume is None and self.second_order:
            return "off for this run (a second-order sampler: Heun, DPM2 and DPM++ SDE cannot resume mid-way)"
        if resume is None:
            return "off for this run (a hook without a cache key, or a 1-step run)"
        return resume.hit.describe() if resume.hit else "miss"
