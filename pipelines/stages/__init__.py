"""A generation as a plan and a sequence of small stages.

The manager builds one `GenerationPlan` from the typed request (model, hooks, caches, metadata extras,
the stages asked for); `run_plan` runs it. Every stage has the same shape: a `name` (the readout's and
the per-stage breakdown's label), `wanted(plan)` (skipped when the request does not ask for it) and
`run(plan, state, info)`, timed by the plan's one StageClock (`info["detail"]` is what the readout
shows beside the time). New modes add a stage, not branches in one big function.

Two lists: `prepare` stages run once per generation before the hooks attach (face embed, text
encode, init-image encode); `per_batch` stages run for each batch with the hooks attached (denoise,
hires pass, VAE decode, face detail), then the batch's images are recorded (infotext) and the
`finish` stages run on them (save).

A hires pass on another checkpoint (A1111's "Hires checkpoint") splits the run in two plans, one per model, so each
model loads once whatever the batch count: `run_first_passes` denoises every batch on the first model, then
`run_second_passes` runs the hires pass and the rest on the second (`GenerationPlan.first_model` names the first in the
infotext; `step_base` puts the second plan's steps after all the first passes' in the readout). A refiner (A1111's) splits
the run the same way, at the switch step: the first plan's denoise stops there (`stop_after`), the second's goes on
from it on the refiner (`resume_at`, stages.refiner) and runs the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from pipelines.generate import LoadedModel, RunOptions, RunOutput
from pipelines.hooks import HookContext, attached
from pipelines.request import GeneratedImage, ValidatedRequest
from pipelines.telemetry import EventBus, Notice, StageClock, StepClock


class Stage(Protocol):
    name: str

    def wanted(self, plan: "GenerationPlan") -> bool:
        """Whether the request asks for this stage (a stage not wanted is not timed and not shown)."""

    def run(self, plan: "GenerationPlan", state: "RunState", info: dict) -> None:
        """Do the work, reading and writing `state`; put a short note in info["detail"]."""


@dataclass
class GenerationPlan:
    """Everything one generation needs, decided before it starts."""

    model: LoadedModel
    validated: ValidatedRequest
    options: RunOptions
    bus: EventBus
    clock: StageClock
    prepare: list = field(default_factory=list)
    per_batch: list = field(default_factory=list)
    finish: list = field(default_factory=list)
    steps_per_batch: int = 0  # denoising steps one batch runs in all of this plan's passes
    step_base: int = 0  # the readout's steps before this plan's first batch (a second plan: the first passes')
    first_model: LoadedModel | None = None  # a second plan's: the model the first passes ran on (the infotext's Model)
    stop_after: int | None = None  # a first plan with a refiner: the denoise stops after this step of the full schedule
    resume_at: int | None = None  # its second plan: the refiner's denoise goes on from that step

    def batch_step_offset(self, batch_index: int) -> int:
        """The readout's step count before batch `batch_index` of this plan begins."""
        return self.step_base + batch_index * self.steps_per_batch

    @property
    def request(self):
        return self.validated.request

    @property
    def true_cfg(self) -> bool:
        """FLUX true CFG (PuLID-FLUX's control): a negative-prompt transformer pass per step."""
        from pipelines.families import Family

        return self.model.family is Family.FLUX and self.options.true_cfg_scale > 1

    @property
    def use_cfg(self) -> bool:
        from pipelines.families import Family

        return (self.request.cfg_scale > 1 and self.model.family is not Family.FLUX) or self.true_cfg


@dataclass
class RunState:
    """What the stages hand each other: run-level results, then the current batch's."""

    step_clock: StepClock
    context: HookContext
    warnings: list[str] = field(default_factory=list)
    cache_notes: dict[str, str] = field(default_factory=dict)
    embeds: dict | None = None  # the encoded prompt, as pipeline keyword arguments (with prompt editing: its first segment's)
    prompt: object | None = None  # the main pass's EncodedPrompt (stages.prepare): the embeds and the prompt editing's segments
    inversions: list = field(default_factory=list)  # the textual inversions the prompts name (stages.prepare)
    init: object | None = None  # init-image stage output (img2img / inpaint), when asked for
    # the current batch
    batch_index: int = 0
    seeds: list[int] = field(default_factory=list)
    subseeds: list = field(default_factory=list)  # the batch's variation seeds (None each when the variation is off)
    width: int = 0  # the size `latents` are at: the request's, until a hires pass changes it
    height: int = 0
    latents: torch.Tensor | None = None
    decoded: list = field(default_factory=list)  # PIL images of the batch
    outcome: object | None = None  # the VAE decode's DecodeOutcome
    batch_extra: dict = field(default_factory=dict)  # infotext keys a stage adds for this batch only
    image_extra: list[dict] = field(default_factory=list)  # per image of the batch: infotext keys of that image only
    before_detail: list = field(default_factory=list)  # per image: the picture before the face detailer (None: unchanged)
    first_pictures: list | None = None  # a split run: the first pass decoded on the first model (image upscalers only)
    skip_rest: bool = False  # the batch is over (Skip pressed): no later stage runs for it
    # across batches
    images: list[GeneratedImage] = field(default_factory=list)
    batch: list[GeneratedImage] = field(default_factory=list)  # the current batch's recorded images
    vae_label: str = ""
    fell_back: bool = False
    last_latents: torch.Tensor | None = None
    stage_seconds_before: dict = field(default_factory=dict)

    def warn(self, bus: EventBus, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)
        bus.publish(Notice(text, "warning"))

    def begin_batch(self, index: int, seeds: list[int], clock: StageClock, width: int, height: int, subseeds: list | None = None) -> None:
        self.batch_index, self.seeds, self.width, self.height = index, seeds, width, height
        self.subseeds = subseeds if subseeds is not None else [None] * len(seeds)
        self.context.width, self.context.height = width, height  # a hires pass of the batch before changed them
        self.latents, self.decoded, self.outcome, self.batch_extra, self.skip_rest, self.batch = None, [], None, {}, False, []
        self.image_extra, self.before_detail, self.first_pictures = [], [], None
        self.stage_seconds_before = dict(clock.seconds)

    def batch_stage_seconds(self, clock: StageClock, prepare_names: set[str]) -> dict[str, float]:
        """This batch's own stage times, plus the run-level ones it shares (text encode, face embed, ...)."""
        return {name: total - (0.0 if name in prepare_names else self.stage_seconds_before.get(name, 0.0))
                for name, total in clock.seconds.items() if name in prepare_names or total > self.stage_seconds_before.get(name, 0.0)}


def run_stage(stage, plan: GenerationPlan, state: RunState) -> None:
    if stage.wanted(plan):
        with plan.clock.stage(stage.name) as info:
            stage.run(plan, state, info)


def new_state(plan: GenerationPlan, total_steps: int) -> RunState:
    """A run's state; `total_steps` is the readout's N (every batch's steps in every pass)."""
    request = plan.request
    return RunState(
        StepClock(plan.bus, plan.model.device, total_steps, synchronize=plan.options.synchronize_steps),
        HookContext(request.steps, request.height, request.width, request.batch_size),
        warnings=list(plan.validated.warnings),
    )


def prepare_run(plan: GenerationPlan, state: RunState) -> None:
    for stage in plan.prepare:
        run_stage(stage, plan, state)
    state.step_clock.restart()  # the face embed, text and image encode are stages of their own, not part of step 1


def run_batch_stages(plan: GenerationPlan, state: RunState) -> bool:
    """This batch's per-batch stages in order; False when it was skipped."""
    for stage in plan.per_batch:
        run_stage(stage, plan, state)
        if state.skip_rest:
            return False
    return True


def finish_batch(plan: GenerationPlan, state: RunState, record_batch) -> None:
    record_batch(plan, state)
    for stage in plan.finish:
        run_stage(stage, plan, state)
    state.images += state.batch


def run_output(state: RunState) -> RunOutput:
    return RunOutput(state.images, state.step_clock.step_seconds, state.warnings, state.vae_label, state.fell_back,
                     state.last_latents, dict(state.context.stats), state.cache_notes, (state.width, state.height))


def run_plan(plan: GenerationPlan, record_batch) -> RunOutput:
    """Prepare once, then each batch with the hooks attached; `record_batch(plan, state)` turns a batch's
    decoded images into GeneratedImages (infotext) before the finish stages (save) see them."""
    request = plan.request
    state = new_state(plan, plan.steps_per_batch * request.batch_count)
    prepare_run(plan, state)
    with attached(plan.model.pipe, plan.options.hooks, state.context):
        for index, (seeds, subseeds) in enumerate(zip(plan.validated.seeds(), plan.validated.subseeds())):
            state.begin_batch(index, seeds, plan.clock, request.width, request.height, subseeds)
            if run_batch_stages(plan, state):
                finish_batch(plan, state, record_batch)
    return run_output(state)


@dataclass
class FirstPass:
    """One batch's first pass, kept for the second plan: its latents (on the CPU while the models swap), its infotext
    keys and the stage seconds it took."""

    index: int
    seeds: list[int]
    subseeds: list
    latents: torch.Tensor
    batch_extra: dict
    seconds: dict[str, float]
    pictures: list | None = None  # decoded on the first model, for an image upscaler


def run_first_passes(plan: GenerationPlan, state: RunState) -> list[FirstPass]:
    """The first plan of a split run: prepare, then every batch's per-batch stages (the denoise) on its model."""
    request = plan.request
    prepare_run(plan, state)
    passes = []
    with attached(plan.model.pipe, plan.options.hooks, state.context):
        for index, (seeds, subseeds) in enumerate(zip(plan.validated.seeds(), plan.validated.subseeds())):
            state.begin_batch(index, seeds, plan.clock, request.width, request.height, subseeds)
            if run_batch_stages(plan, state):
                seconds = state.batch_stage_seconds(plan.clock, set())
                passes.append(FirstPass(index, seeds, state.subseeds, state.latents.detach().to("cpu"), dict(state.batch_extra), seconds,
                                        state.first_pictures))
    state.latents = None
    return passes


def run_second_passes(plan: GenerationPlan, state: RunState, passes: list[FirstPass], record_batch) -> RunOutput:
    """The second plan of a split run: prepare on its model (the prompts through its text encoders), then each first
    pass's remaining stages, recorded and saved as one run; a batch's stage times include its first pass's."""
    request = plan.request
    prepare_run(plan, state)
    with attached(plan.model.pipe, plan.options.hooks, state.context):
        for first in passes:
            state.begin_batch(first.index, first.seeds, plan.clock, request.width, request.height, first.subseeds)
            state.latents = first.latents.to(plan.model.device)
            state.batch_extra, state.first_pictures = dict(first.batch_extra), first.pictures
            for name, seconds in first.seconds.items():  # counted as this batch's own by batch_stage_seconds
                state.stage_seconds_before[name] = state.stage_seconds_before.get(name, 0.0) - seconds
            if run_batch_stages(plan, state):
                finish_batch(plan, state, record_batch)
    return run_output(state)
