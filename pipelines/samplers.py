"""Sampler names users know (A1111 spelling) mapped to diffusers schedulers, and A1111's "Schedule type".

A1111 (1.9 on) names a sampler ("DPM++ 2M") and, apart, the noise schedule it steps through ("Karras"); its
"Automatic" schedule is the sampler's own default (Karras for DPM++ 2M). Here a schedule type is the diffusers
setting that makes the same spacing of noise levels, or where diffusers has none, levels computed by
pipelines/schedules.py; the old combined names ("DPM++ 2M Karras") still work.

The schedulers are named, not imported: this list is what every entry point checks a request against,
and the CLI parser reads it before anything has imported diffusers (pipelines/choices.py says why)."""
from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.choices import SCHEDULE_TYPES
from pipelines.families import Family
from pipelines.schedules import FORMULA_SCHEDULES

AUTOMATIC = SCHEDULE_TYPES[0]
# What each schedule type sets in a diffusers scheduler. Uniform is k-diffusion's `get_sigmas` (timesteps evenly spaced
# from the last to the first, diffusers' "linspace"); SGM Uniform starts at the last timestep and leaves out the
# first ("trailing": what SDXL Lightning, Hyper-SD and zero-terminal-SNR models are trained for). Karras, Exponential
# and Beta (alpha = beta = 0.6, A1111's defaults and diffusers') space the noise levels between the model's smallest
# and largest by their formulas. The others (Polyexponential, KL Optimal, Align Your Steps, Simple, Normal, DDIM) have
# no diffusers setting: pipelines/schedules.py computes their levels.
SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
# The formula schedules span the model's whole range of noise levels, as A1111's (its sigma_min and sigma_max are the
# model's): diffusers' Euler-type schedulers take the range from the spaced timesteps, so the spacing that reaches
# both ends (linspace) goes with them; the model's own ("leading" for SD 1.5 and SDXL) starts at a lower noise level.
_WHOLE_RANGE = {"timestep_spacing": "linspace"}
SCHEDULE_SETTINGS = {
    "Uniform": {"timestep_spacing": "linspace"},
    "Karras": _WHOLE_RANGE | {"use_karras_sigmas": True},
    "Exponential": _WHOLE_RANGE | {"use_exponential_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Beta": _WHOLE_RANGE | {"use_beta_sigmas": True},  # diffusers computes it with scipy (installed with torchsde and insightface)
}
# A schedule made by pipelines/schedules.py goes where diffusers computes its Karras levels: that switch on.
LEVELS_HOOK = {"use_karras_sigmas": True}
# A1111's other names for them (its API's `scheduler` takes the name or the label; the rest are the labels in lower case).
SCHEDULE_ALIASES = {"sgm_uniform": "SGM Uniform", "sgmuniform": "SGM Uniform", "kl_optimal": "KL Optimal",
                    "align_your_steps": "Align Your Steps"}
# Which schedule types a diffusers scheduler can step through: all of them when it has the Karras hook (or, Euler a,
# its levels can be set after its own set_timesteps); only the timestep spacings for DDIM (it steps through
# timesteps, not noise levels); LCM spaces its few steps by its own rule.
ALL_SCHEDULES = SCHEDULE_TYPES
SPACINGS_ONLY = (AUTOMATIC, "Uniform", "SGM Uniform")
OWN_ONLY = (AUTOMATIC,)
# The multistep solvers' "linspace" spaces n + 1 timesteps and leaves out the last, so it never reaches the model's
# smallest noise level as A1111's Uniform does (it would equal SGM Uniform there): their Uniform is computed here too.
MULTISTEP_MADE_HERE = (*FORMULA_SCHEDULES, "Uniform")
# diffusers' Euler a has no sigma settings: every formula schedule is computed here for it.
EULER_A_MADE_HERE = (*FORMULA_SCHEDULES, "Karras", "Exponential", "Beta")


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler: str  # the diffusers scheduler class
    overrides: dict = field(default_factory=dict)
    # A1111's default for "Automatic" (its sampler's options["scheduler"]); Automatic: the model's own spacing.
    default_schedule: str = AUTOMATIC
    schedules: tuple = ALL_SCHEDULES
    model_calls: int = 1  # denoiser calls per step: 2 for the second-order samplers (Heun, DPM2, DPM++ SDE)
    written_as: tuple[str, str] | None = None  # the infotext's (Sampler, Schedule type) when not ours (Forge's FLUX Euler)
    made_here: tuple = FORMULA_SCHEDULES  # the schedule types whose noise levels pipelines/schedules.py computes for it

    def resolve(self, schedule_type: str) -> str:
        """The schedule that runs: Automatic becomes A1111's default for this sampler."""
        return self.default_schedule if schedule_type == AUTOMATIC else schedule_type

    def settings(self, schedule_type: str = AUTOMATIC) -> dict:
        """The diffusers settings for this sampler on `schedule_type`, over the model's scheduler config. Every sigma
        setting is given, so a model config that turns one on (a Karras config) does not lend it to another schedule."""
        settings = dict(self.overrides)
        if self.has_sigma_settings:
            settings |= {flag: False for flag in SIGMA_FLAGS}
        schedule = self.resolve(schedule_type)
        if schedule in self.made_here:
            return settings | (LEVELS_HOOK if self.has_sigma_settings else {})
        return settings | SCHEDULE_SETTINGS.get(schedule, {})

    @property
    def has_sigma_settings(self) -> bool:
        """diffusers' Karras / Exponential / Beta switches (and so the Karras hook): not Euler a, DDIM, LCM, Flow Euler."""
        return "Karras" in self.schedules and "Karras" not in self.made_here

    def make(self, base_config, schedule_type: str = AUTOMATIC, family: Family = Family.SD15):
        """The diffusers scheduler for a run; `family` picks Align Your Steps' levels (SDXL's or SD 1.5's)."""
        import diffusers  # a model is loaded by now, so diffusers is too

        from pipelines.schedules import scheduler_with_levels

        made = getattr(diffusers, self.scheduler)
        schedule = self.resolve(schedule_type)
        if schedule in self.made_here:
            made = scheduler_with_levels(made, schedule, family)
        return made.from_config(base_config, **self.settings(schedule_type))

    def infotext(self, schedule_type: str) -> tuple[str, str]:
        """A1111's "Sampler" and "Schedule type" for a run: the schedule that ran (A1111 writes Karras, not Automatic)."""
        return self.written_as or (self.name, self.resolve(schedule_type))


def seed_step_noise(scheduler, seeds: list[int]) -> None:
    """DPM++ SDE draws its step noise from a Brownian tree (torchsde) seeded when the loop starts; without a seed it
    takes a random one, and the same seed would not give the same picture. Seeded with the batch's image seeds, as
    A1111 seeds its tree, so each image's noise follows its own seed. Other schedulers have no such tree."""
    if hasattr(scheduler, "noise_sampler_seed"):
        scheduler.noise_sampler_seed = list(seeds)  # a tree per image, a batch of one too: batched or not, the same noise
        scheduler.noise_sampler = None


_DPMPP = {"algorithm_type": "dpmsolver++"}
_SDE = {"algorithm_type": "sde-dpmsolver++"}
UNET_SAMPLERS = [
    Sampler("Euler", "EulerDiscreteScheduler"),
    # diffusers' Euler a has no sigma settings: its formula schedules are all computed here.
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", made_here=EULER_A_MADE_HERE),
    # The algorithm is named: a model whose own scheduler config is an SDE DPM-Solver would otherwise lend it its own.
    # A1111's defaults: Karras for DPM++ 2M, DPM++ SDE and DPM2; Exponential for the SDE multistep ones.
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", _DPMPP, "Karras", made_here=MULTISTEP_MADE_HERE),
    # The SDE variants add seeded noise at each step (diffusers' own noise: A1111's torchsde Brownian tree draws other
    # images from the same seed).
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", _SDE, "Exponential", made_here=MULTISTEP_MADE_HERE),
    Sampler("DPM++ 3M SDE", "DPMSolverMultistepScheduler", _SDE | {"solver_order": 3}, "Exponential", made_here=MULTISTEP_MADE_HERE),
    # Second-order samplers: two denoiser calls a step (the readout counts steps, as A1111 does). DPM++ SDE's noise comes
    # from torchsde's Brownian tree, seeded with the image seeds (`seed_step_noise`).
    Sampler("DPM++ SDE", "DPMSolverSDEScheduler", {}, "Karras", model_calls=2),
    Sampler("Heun", "HeunDiscreteScheduler", model_calls=2),
    Sampler("DPM2", "KDPM2DiscreteScheduler", {}, "Karras", model_calls=2),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, "Karras", model_calls=2),
    Sampler("LMS", "LMSDiscreteScheduler"),
    # diffusers' DDIM clips its x0 guess to [-1, 1] unless the config says otherwise: latents are not
    # pixels (SD's official config says clip_sample false; an Euler config, as the demo's, says nothing).
    # A1111 never clips. Measured on the demo: background right 15 % with the clip, 100 % without.
    Sampler("DDIM", "DDIMScheduler", {"clip_sample": False}, schedules=SPACINGS_ONLY, made_here=()),
    Sampler("UniPC", "UniPCMultistepScheduler", made_here=MULTISTEP_MADE_HERE),
    # For LCM models and LoRAs (4-8 steps, CFG 1-2): a few steps instead of 20-30.
    Sampler("LCM", "LCMScheduler", schedules=OWN_ONLY, made_here=()),
]
# FLUX.1's flow-match Euler with its resolution-dependent shift: the model's own schedule only.
FLOW_SAMPLERS = [Sampler("Flow Euler", "FlowMatchEulerDiscreteScheduler", schedules=OWN_ONLY, written_as=("Euler", "Simple"), made_here=())]


def samplers_for(family: Family) -> list[Sampler]:
    return FLOW_SAMPLERS if family is Family.FLUX else UNET_SAMPLERS


def sampler_names(family: Family) -> list[str]:
    return [s.name for s in samplers_for(family)]


def find_schedule_type(text) -> str | None:
    """Our schedule type for a label or A1111 name ("Karras", "karras", "sgm_uniform"); None when it is not one."""
    if not isinstance(text, str):
        return None
    low = text.strip().lower()
    for label in SCHEDULE_TYPES:
        if low == label.lower():
            return label
    return SCHEDULE_ALIASES.get(low)


def split_sampler_name(name: str) -> tuple[str, str | None]:
    """A1111's old combined names: "DPM++ 2M Karras" -> ("DPM++ 2M", "Karras"); a plain name -> (name, None)."""
    for schedule in SCHEDULE_TYPES[1:]:
        if name.lower().endswith(" " + schedule.lower()):
            return name[:-len(schedule) - 1], schedule
    return name, None


def find_sampler(family: Family, name: str) -> Sampler:
    """The sampler by name, any case; an old combined name ("DPM++ 2M Karras") finds its sampler ("DPM++ 2M")."""
    base, _schedule = split_sampler_name(name)
    for sampler in samplers_for(family):
        if sampler.name.lower() == base.lower():
            return sampler
    raise KeyError(name)


def has_sampler(family: Family, name) -> bool:
    try:
        find_sampler(family, name)
    except (KeyError, AttributeError):  # AttributeError: not text
        return False
    return True


def schedule_names(family: Family, sampler_name: str) -> list[str]:
    """The schedule types a sampler can run (the UI's choices); every one when the sampler is not known."""
    try:
        return list(find_sampler(family, sampler_name).schedules)
    except (KeyError, AttributeError):
        return list(SCHEDULE_TYPES)


SAMPLER_NAMES = [s.name for s in UNET_SAMPLERS + FLOW_SAMPLERS]
# The old combined names A1111 (before 1.9) and earlier Likeness wrote; every entry point takes them too.
LEGACY_SAMPLER_NAMES = ["DPM++ 2M Karras", "DPM++ 2M SDE Karras", "DPM++ 2M SDE Exponential", "DPM++ 3M SDE Karras",
                        "DPM++ 3M SDE Exponential", "DPM++ SDE Karras", "DPM2 Karras", "DPM2 a Karras", "LMS Karras"]


def sampler_from_infotext(sampler: str, schedule: str | None, family: Family | None = None) -> tuple[str, str, str | None]:
    """A PNG's "Sampler" and "Schedule type" -> (our sampler, our schedule type, a note when the schedule is not ours).
    'DPM++ 2M' + 'Karras' and A1111's older 'DPM++ 2M Karras' both give ('DPM++ 2M', 'Karras'); none written is
    Automatic (as A1111's paste reads it). `family`: the model's the values go to; "Euler" + "Simple" is how Forge
    writes FLUX.1's flow-match Euler, and A1111's Euler on its Simple schedule for the others."""
    name, from_name = split_sampler_name(sampler.strip())
    if family is Family.FLUX and name in ("Euler", "Flow Euler"):
        own = (schedule or "").strip().lower() in ("", "simple", "automatic")
        return "Flow Euler", AUTOMATIC, None if own else f"FLUX.1 models run their own schedule here; Schedule type {schedule} was not used."
    if from_name:
        return name, from_name, None
    if schedule in (None, ""):
        return name, AUTOMATIC, None
    ours = find_schedule_type(schedule)
    if ours is None:
        return name, AUTOMATIC, f"Schedule type {schedule!r} is not available here; Automatic was chosen."
    known = {s.name.lower(): s for s in UNET_SAMPLERS + FLOW_SAMPLERS}.get(name.lower())
    if known is not None and ours not in known.schedules:
        return name, AUTOMATIC, f"Schedule type {ours} is not available with {known.name} here; Automatic was chosen."
    return name, ours, None
