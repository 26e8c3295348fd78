"""Sampler names users know (A1111 spelling) mapped to diffusers schedulers.

The schedulers are named, not imported: this list is what every entry point checks a request against,
and the CLI parser reads it before anything has imported diffusers (pipelines/choices.py says why)."""
from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.families import Family


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler: str  # the diffusers scheduler class
    overrides: dict = field(default_factory=dict)
    infotext_sampler: str = ""  # A1111 writes the sampler and the schedule type as two keys
    infotext_schedule: str = ""
    model_calls: int = 1  # denoiser calls per step: 2 for the second-order samplers (Heun, DPM2, DPM++ SDE)

    def make(self, base_config):
        import diffusers  # a model is loaded by now, so diffusers is too

        return getattr(diffusers, self.scheduler).from_config(base_config, **self.overrides)


def seed_step_noise(scheduler, seeds: list[int]) -> None:
    """DPM++ SDE draws its step noise from a Brownian tree (torchsde) seeded when the loop starts; without a seed it
    takes a random one, and the same seed would not give the same picture. Seeded with the batch's image seeds, as
    A1111 seeds its tree, so each image's noise follows its own seed. Other schedulers have no such tree."""
    if hasattr(scheduler, "noise_sampler_seed"):
        scheduler.noise_sampler_seed = list(seeds)  # a tree per image, a batch of one too: batched or not, the same noise
        scheduler.noise_sampler = None


UNET_SAMPLERS = [
    Sampler("Euler", "EulerDiscreteScheduler", {}, "Euler", "Automatic"),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", {}, "Euler a", "Automatic"),
    # The algorithm is named: a model whose own scheduler config is an SDE DPM-Solver would otherwise lend it its own.
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}, "DPM++ 2M", "Automatic"),
    Sampler("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}, "DPM++ 2M", "Karras"),
    # The SDE variants add seeded noise at each step (diffusers' own noise: A1111's torchsde Brownian tree draws other
    # images from the same seed).
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": False},
            "DPM++ 2M SDE", "Automatic"),
    Sampler("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
            "DPM++ 2M SDE", "Karras"),
    Sampler("DPM++ 3M SDE", "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "use_karras_sigmas": False}, "DPM++ 3M SDE", "Automatic"),
    Sampler("DPM++ 3M SDE Karras", "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "use_karras_sigmas": True}, "DPM++ 3M SDE", "Karras"),
    # Second-order samplers: two denoiser calls a step (the readout counts steps, as A1111 does). DPM++ SDE's noise comes
    # from torchsde's Brownian tree, seeded with the image seeds (`seed_step_noise`).
    Sampler("DPM++ SDE", "DPMSolverSDEScheduler", {"use_karras_sigmas": False}, "DPM++ SDE", "Automatic", 2),
    Sampler("DPM++ SDE Karras", "DPMSolverSDEScheduler", {"use_karras_sigmas": True}, "DPM++ SDE", "Karras", 2),
    Sampler("Heun", "HeunDiscreteScheduler", {"use_karras_sigmas": False}, "Heun", "Automatic", 2),
    Sampler("DPM2", "KDPM2DiscreteScheduler", {"use_karras_sigmas": False}, "DPM2", "Automatic", 2),
    Sampler("DPM2 Karras", "KDPM2DiscreteScheduler", {"use_karras_sigmas": True}, "DPM2", "Karras", 2),
    Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": False}, "DPM2 a", "Automatic", 2),
    Sampler("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}, "DPM2 a", "Karras", 2),
    Sampler("LMS", "LMSDiscreteScheduler", {"use_karras_sigmas": False}, "LMS", "Automatic"),
    Sampler("LMS Karras", "LMSDiscreteScheduler", {"use_karras_sigmas": True}, "LMS", "Karras"),
    # diffusers' DDIM clips its x0 guess to [-1, 1] unless the config says otherwise: latents are not
    # pixels (SD's official config says clip_sample false; an Euler config, as the demo's, says nothing).
    # A1111 never clips. Measured on the demo: background right 15 % with the clip, 100 % without.
    Sampler("DDIM", "DDIMScheduler", {"clip_sample": False}, "DDIM", "Automatic"),
    Sampler("UniPC", "UniPCMultistepScheduler", {}, "UniPC", "Automatic"),
    # For LCM models and LoRAs (4-8 steps, CFG 1-2): a few steps instead of 20-30.
    Sampler("LCM", "LCMScheduler", {}, "LCM", "Automatic"),
]
FLOW_SAMPLERS = [Sampler("Flow Euler", "FlowMatchEulerDiscreteScheduler", {}, "Euler", "Simple")]


def samplers_for(family: Family) -> list[Sampler]:
    return FLOW_SAMPLERS if family is Family.FLUX else UNET_SAMPLERS


def sampler_names(family: Family) -> list[str]:
    return [s.name for s in samplers_for(family)]


ALL_SAMPLER_NAMES = [s.name for s in UNET_SAMPLERS + FLOW_SAMPLERS]


def find_sampler(family: Family, name: str) -> Sampler:
    for sampler in samplers_for(family):
        if sampler.name.lower() == name.lower():
            return sampler
    raise KeyError(name)


def sampler_from_infotext(sampler: str, schedule: str | None) -> str:
    """'DPM++ 2M' + 'Karras' -> 'DPM++ 2M Karras': the name our sampler list uses."""
    if schedule and schedule.lower() == "karras" and f"{sampler} Karras" in ALL_SAMPLER_NAMES:
        return f"{sampler} Karras"
    if sampler == "Euler" and schedule and schedule.lower() == "simple":
        return "Flow Euler"  # how Forge writes FLUX's flow-match Euler
    return sampler
