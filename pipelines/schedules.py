"""A1111's schedule types that diffusers has no setting for, as noise levels, and the scheduler classes that step
through them.

A1111 (k-diffusion, and ComfyUI's for Simple / Normal / DDIM / Beta) computes each schedule as n noise levels from the
model's own ones. diffusers computes Karras levels inside `set_timesteps` (`_convert_to_karras`), and every scheduler
builds its own step rule (second order, multistep, the timesteps it feeds the model) around what that returns. So a
schedule diffusers lacks is that one method returning the schedule's levels instead, with the Karras switch on: the
scheduler's stepping is diffusers' unchanged. Euler a (diffusers has no sigma settings there) gets the levels after its
own `set_timesteps`.

The last level: A1111 appends 0, as diffusers does, except KL Optimal, whose own last level is the model's smallest
(the picture keeps that much noise there); here its steps end at 0 like the others."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from pipelines.families import Family

# Align Your Steps (NVIDIA's published 10-step levels, A1111's lists): SDXL's, and SD 1.5's for every other model.
AYS_LEVELS = {
    Family.SDXL: [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
    Family.SD15: [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
}
POLYEXPONENTIAL_RHO = 1.0  # A1111's default for Polyexponential (its "rho" setting 0 = the schedule's default)
KARRAS_RHO = 7.0
BETA_ALPHA = BETA_BETA = 0.6  # A1111's defaults (its settings beta_dist_alpha / beta_dist_beta)


def model_sigmas(alphas_cumprod) -> np.ndarray:
    """The model's noise level at each training timestep, t = 0 first (k-diffusion's CompVisDenoiser.sigmas)."""
    alphas = np.asarray(alphas_cumprod, dtype=np.float64)
    return ((1 - alphas) / alphas) ** 0.5


def sigma_at(t: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """k-diffusion's t_to_sigma: the level at a fractional timestep, interpolated in log sigma."""
    return np.exp(np.interp(t, np.arange(len(sigmas)), np.log(sigmas)))


def timestep_of(levels: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """k-diffusion's sigma_to_t: the fractional timestep of each level (what the model is told)."""
    return np.interp(np.log(levels), np.log(sigmas), np.arange(len(sigmas)))


def karras(n: int, low: float, high: float, rho: float = KARRAS_RHO) -> np.ndarray:
    ramp = np.linspace(0, 1, n)
    return (high ** (1 / rho) + ramp * (low ** (1 / rho) - high ** (1 / rho))) ** rho


def polyexponential(n: int, low: float, high: float, rho: float = POLYEXPONENTIAL_RHO) -> np.ndarray:
    """k-diffusion's: log sigma along a power ramp (rho 1: even in log sigma, as Exponential)."""
    ramp = np.linspace(1, 0, n) ** rho
    return np.exp(ramp * (np.log(high) - np.log(low)) + np.log(low))


def beta(n: int, low: float, high: float) -> np.ndarray:
    import scipy.stats  # installed with torchsde and insightface; only this schedule needs it

    quantiles = scipy.stats.beta.ppf(1 - np.linspace(0, 1, n), BETA_ALPHA, BETA_BETA)
    return low + quantiles * (high - low)


def kl_optimal(n: int, low: float, high: float) -> np.ndarray:
    """Even steps in arctan(sigma) (A1111's kl_optimal; its n + 1st level, the smallest, is left to the final 0)."""
    fraction = np.arange(n) / n
    return np.tan(fraction * np.arctan(low) + (1 - fraction) * np.arctan(high))


def align_your_steps(n: int, family: Family) -> np.ndarray:
    """NVIDIA's levels, stretched to n steps by log-linear interpolation (A1111's; 11 steps take the list as it is)."""
    levels = np.asarray(AYS_LEVELS.get(family, AYS_LEVELS[Family.SD15]))
    if n == len(levels):
        return levels
    log_levels = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(levels)), np.log(levels[::-1]))
    return np.exp(log_levels)[::-1].copy()


def simple(n: int, sigmas: np.ndarray) -> np.ndarray:
    """Every len/n-th of the model's levels from the top (ComfyUI's simple)."""
    stride = len(sigmas) / n
    return np.array([sigmas[-(1 + int(i * stride))] for i in range(n)])


def normal(n: int, sigmas: np.ndarray) -> np.ndarray:
    """Timesteps evenly from the largest level's to the smallest's (ComfyUI's normal, k-diffusion's get_sigmas)."""
    return sigma_at(np.linspace(len(sigmas) - 1, 0, n), sigmas)


def ddim(n: int, sigmas: np.ndarray) -> np.ndarray:
    """Timesteps 1, 1 + k, 1 + 2k... with k = len // n, from the top (ComfyUI's ddim_uniform). Where len // n leaves
    room for more (30 steps: k = 33 gives 31 levels), A1111 runs the extra step at the top; here the n asked, the lowest."""
    stride = max(len(sigmas) // n, 1)
    return sigmas[1::stride][:n][::-1].copy()


def exponential(n: int, low: float, high: float) -> np.ndarray:
    """Even steps in log sigma (k-diffusion's get_sigmas_exponential)."""
    return polyexponential(n, low, high, rho=1.0)


# By what they are computed from: the model's smallest and largest levels, or its whole table of levels.
FROM_RANGE = {"Karras": karras, "Exponential": exponential, "Polyexponential": polyexponential, "Beta": beta, "KL Optimal": kl_optimal}
FROM_TABLE = {"Uniform": normal, "Normal": normal, "Simple": simple, "DDIM": ddim}


def noise_levels(schedule: str, n: int, alphas_cumprod, family: Family) -> np.ndarray:
    """The schedule's n noise levels, largest first, for a model with these alphas (its own levels and range)."""
    sigmas = model_sigmas(alphas_cumprod)
    if schedule in FROM_RANGE:
        return FROM_RANGE[schedule](n, float(sigmas[0]), float(sigmas[-1]))
    if schedule in FROM_TABLE:
        return FROM_TABLE[schedule](n, sigmas)
    if schedule == "Align Your Steps":
        return align_your_steps(n, family)
    raise ValueError(f"No noise-level formula for schedule type {schedule!r}.")


# The schedule types made here (the others are diffusers settings: pipelines/samplers.py).
FORMULA_SCHEDULES = ("Polyexponential", "KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM")


@lru_cache(maxsize=None)
def scheduler_with_levels(base: type, schedule: str, family: Family) -> type:
    """`base` (a diffusers scheduler class) stepping through `schedule`'s levels: one class per (base, schedule,
    family), so a scheduler made again from its config (`type(s).from_config`) keeps the schedule."""
    if hasattr(base, "_convert_to_karras"):
        def _convert_to_karras(self, in_sigmas, num_inference_steps=None):
            return noise_levels(schedule, num_inference_steps or self.num_inference_steps, self.alphas_cumprod, family)

        members = {"_convert_to_karras": _convert_to_karras}
    else:
        def set_timesteps(self, num_inference_steps, device=None, **kwargs):
            base.set_timesteps(self, num_inference_steps, device, **kwargs)
            set_levels(self, noise_levels(schedule, num_inference_steps, self.alphas_cumprod, family))

        members = {"set_timesteps": set_timesteps}
    # diffusers' module: a pipeline records its components' library from it (from_pipe, save_pretrained).
    members |= {"noise_schedule": schedule, "__doc__": f"{base.__name__} on A1111's {schedule} schedule.", "__module__": base.__module__}
    return type(f"{base.__name__}{schedule.replace(' ', '')}", (base,), members)


def set_levels(scheduler, levels: np.ndarray) -> None:
    """A sigma scheduler without a Karras hook (Euler a): its levels, a final 0, and the model timestep of each."""
    import torch  # not at the top: samplers.py (and so the CLI's parser) imports this module before anything heavy

    sigmas = model_sigmas(scheduler.alphas_cumprod)
    device = scheduler.sigmas.device
    scheduler.sigmas = torch.from_numpy(np.append(levels, 0.0).astype(np.float32)).to(device)
    scheduler.timesteps = torch.from_numpy(timestep_of(levels, sigmas).astype(np.float32)).to(device)
    scheduler._step_index = None
    scheduler._begin_index = None
