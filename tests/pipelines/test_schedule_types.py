"""A1111's Schedule type: each one spaces the noise levels as A1111's formula does, requests check and resolve it, and
it runs, shows in the PNG and keys the caches."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.stats

from pipelines.errors import InvalidRequest
from pipelines.families import Family
from pipelines.infotext import parse_infotext
from pipelines.request import validate_request
from pipelines.samplers import UNET_SAMPLERS, find_sampler, sampler_from_infotext
from tests.tiny_models import tiny_request

STEPS = 10
# SD 1.5's and SDXL's noise schedule, in the model's own scheduler config ("leading" spacing, as both ship).
MODEL_CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1,
                    timestep_spacing="leading")


def model_sigmas() -> np.ndarray:
    """sigma(t) for t = 0..999, from the betas (k-diffusion's CompVisDenoiser reads the same)."""
    betas = np.linspace(MODEL_CONFIG["beta_start"] ** 0.5, MODEL_CONFIG["beta_end"] ** 0.5, 1000) ** 2
    alphas_cumprod = np.cumprod(1 - betas)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def a1111_sigmas(schedule: str, n: int) -> np.ndarray:
    """A1111's formulas (modules/sd_schedulers.py, k-diffusion's get_sigmas_*), written out: n noise levels, the 0 left off."""
    sigmas = model_sigmas()
    low, high = sigmas[0], sigmas[-1]
    if schedule == "Uniform":  # inner_model.get_sigmas(n): t evenly from 999 to 0 (whole numbers at n = 10)
        return sigmas[np.linspace(999, 0, n).round().astype(int)]
    if schedule == "Karras":
        rho = 7.0
        return (high ** (1 / rho) + np.linspace(0, 1, n) * (low ** (1 / rho) - high ** (1 / rho))) ** rho
    if schedule == "Exponential":
        return np.exp(np.linspace(np.log(high), np.log(low), n))
    if schedule == "Beta":  # A1111's defaults: alpha = beta = 0.6
        return low + np.array([scipy.stats.beta.ppf(x, 0.6, 0.6) for x in 1 - np.linspace(0, 1, n)]) * (high - low)
    raise ValueError(schedule)


def made(sampler_name: str, schedule: str):
    import diffusers

    base = diffusers.EulerDiscreteScheduler(**MODEL_CONFIG).config
    scheduler = find_sampler(Family.SD15, sampler_name).make(base, schedule)
    scheduler.set_timesteps(STEPS)
    return scheduler


def step_sigmas(scheduler) -> np.ndarray:
    """The noise level at the start of each step: the second-order KDPM2 schedulers interleave a midpoint per step."""
    sigmas = np.asarray(scheduler.sigmas, dtype=np.float64)
    if type(scheduler).__name__ in ("KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "HeunDiscreteScheduler",
                                    "DPMSolverSDEScheduler"):
        sigmas = np.concatenate([sigmas[:1], sigmas[1:-1:2]])  # s0, then each step's repeated start
    return sigmas[:STEPS]


FORMULA_CASES = [(s.name, schedule) for s in UNET_SAMPLERS for schedule in ("Uniform", "Karras", "Exponential", "Beta")
                 if schedule in s.schedules and s.name != "DDIM"]  # DDIM steps through timesteps, not noise levels: below


@pytest.mark.parametrize("sampler_name, schedule", FORMULA_CASES)
def test_each_schedule_type_spaces_the_noise_levels_as_a1111s_formula(sampler_name, schedule):
    """From the model's largest noise level to its smallest, as A1111's (its sigma_min/max are the model's), though the
    model's config spaces its own timesteps another way ("leading" starts lower)."""
    scheduler = made(sampler_name, schedule)
    np.testing.assert_allclose(step_sigmas(scheduler), a1111_sigmas(schedule, STEPS), rtol=1e-4)
    assert float(scheduler.sigmas[-1]) == 0.0  # the last step lands on the clean picture, as A1111's appended 0


def test_ddim_uniform_steps_through_a1111s_uniform_timesteps():
    np.testing.assert_array_equal(np.asarray(made("DDIM", "Uniform").timesteps), np.linspace(999, 0, STEPS).round())


@pytest.mark.parametrize("sampler_name", [s.name for s in UNET_SAMPLERS if "SGM Uniform" in s.schedules])
def test_sgm_uniform_starts_at_the_last_timestep_and_leaves_out_the_first(sampler_name):
    """A1111's sgm_uniform: t = linspace(999, 0, n + 1) without its last; diffusers' "trailing" rounds each to a whole
    timestep."""
    timesteps = np.asarray(made(sampler_name, "SGM Uniform").timesteps, dtype=np.float64)
    if len(timesteps) > STEPS:  # second-order: t0, then per step a midpoint (or a repeat) and the step's own start
        timesteps = np.concatenate([timesteps[:1], timesteps[2::2]])[:STEPS]
    a1111 = np.linspace(999, 0, STEPS + 1)[:-1]
    assert np.abs(timesteps - a1111).max() <= 1.0, timesteps


def test_automatic_runs_a1111s_default_for_the_sampler():
    for name, default in (("DPM++ 2M", "Karras"), ("DPM++ 2M SDE", "Exponential"), ("DPM2 a", "Karras")):
        np.testing.assert_array_equal(np.asarray(made(name, "Automatic").sigmas), np.asarray(made(name, default).sigmas))
    # no A1111 default: the model's own spacing ("leading": its first step is t = 901 at 10 steps)
    assert int(made("Euler", "Automatic").timesteps[0]) == 901


def test_a_model_config_with_karras_on_does_not_lend_it_to_another_schedule():
    import diffusers

    karras_config = diffusers.EulerDiscreteScheduler(**MODEL_CONFIG, use_karras_sigmas=True).config
    scheduler = find_sampler(Family.SD15, "Euler").make(karras_config, "Exponential")
    scheduler.set_timesteps(STEPS)
    np.testing.assert_allclose(step_sigmas(scheduler), a1111_sigmas("Exponential", STEPS), rtol=1e-4)


# -- requests -------------------------------------------------------------------------------------


def test_validation_resolves_automatic_and_the_old_combined_names():
    checked = validate_request(tiny_request("sd15", sampler="DPM++ 2M"), Family.SD15).request
    assert (checked.sampler, checked.schedule_type) == ("DPM++ 2M", "Karras")
    checked = validate_request(tiny_request("sd15", sampler="dpm++ 2m sde exponential"), Family.SD15).request
    assert (checked.sampler, checked.schedule_type) == ("DPM++ 2M SDE", "Exponential")
    checked = validate_request(tiny_request("sd15", sampler="Euler", schedule_type="sgm_uniform"), Family.SD15).request
    assert (checked.sampler, checked.schedule_type) == ("Euler", "SGM Uniform")
    assert validate_request(tiny_request("sd15", sampler="Euler"), Family.SD15).request.schedule_type == "Automatic"


def test_a_combined_name_wins_over_another_schedule_and_says_so():
    validated = validate_request(tiny_request("sd15", sampler="DPM++ 2M Karras", schedule_type="Beta"), Family.SD15)
    assert validated.request.schedule_type == "Karras"
    assert any("Karras was used, not Beta" in w for w in validated.warnings)


@pytest.mark.parametrize("sampler, schedule, message", [
    ("Euler a", "Karras", "Schedule type Karras is not available with Euler a .*choose one of: Automatic, Uniform, SGM Uniform"),
    ("DPM++ 2M", "Uniform", "not available with DPM\\+\\+ 2M .*Automatic, Karras, Exponential, SGM Uniform, Beta"),
    ("LCM", "SGM Uniform", "not available with LCM .*choose one of: Automatic\\."),
    ("Euler", "Align Your Steps", "Schedule type must be one of: Automatic, Uniform, Karras, Exponential, SGM Uniform, Beta; got 'Align Your Steps'"),
    ("Euler", 3, "Schedule type must be one of: .*; got 3"),
    ("Euler", None, "Schedule type must be one of: .*; got None"),
])
def test_a_schedule_the_sampler_cannot_run_is_refused_with_the_choices(sampler, schedule, message):
    with pytest.raises(InvalidRequest, match=message):
        validate_request(tiny_request("sd15", sampler=sampler, schedule_type=schedule), Family.SD15)


def test_flux_runs_its_own_schedule_only():
    validate_request(tiny_request("flux", sampler="Flow Euler", schedule_type="Automatic"), Family.FLUX)
    with pytest.raises(InvalidRequest, match="not available with Flow Euler"):
        validate_request(tiny_request("flux", sampler="Flow Euler", schedule_type="Karras"), Family.FLUX)


# -- runs -----------------------------------------------------------------------------------------


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_the_schedule_type_changes_the_picture_and_is_written_in_the_png(shared_manager):
    base = tiny_request("sd15", sampler="DPM++ 2M", steps=4, seed=7, save=False)
    automatic = shared_manager.generate(base).images[0]
    karras = shared_manager.generate(dataclasses.replace(base, schedule_type="Karras")).images[0]
    exponential = shared_manager.generate(dataclasses.replace(base, schedule_type="Exponential")).images[0]
    assert np.array_equal(pixels(automatic.image), pixels(karras.image))
    assert np.abs(pixels(exponential.image) - pixels(karras.image)).max() > 2, "served from the Karras run's cache?"
    assert parse_infotext(automatic.infotext)["Schedule type"] == "Karras"  # what ran, as A1111 writes it
    assert parse_infotext(exponential.infotext)["Schedule type"] == "Exponential"


def test_the_png_brings_the_schedule_type_back():
    assert sampler_from_infotext("DPM++ 2M", "Exponential") == ("DPM++ 2M", "Exponential", None)
    assert sampler_from_infotext("DPM++ 2M Karras", None) == ("DPM++ 2M", "Karras", None)  # A1111 before 1.9
    assert sampler_from_infotext("Euler", None) == ("Euler", "Automatic", None)
    assert sampler_from_infotext("Euler", "SGM Uniform") == ("Euler", "SGM Uniform", None)
    assert sampler_from_infotext("Euler", "Simple") == ("Flow Euler", "Automatic", None)  # Forge's FLUX
    sampler, schedule, note = sampler_from_infotext("DPM++ 2M", "Align Your Steps")
    assert (sampler, schedule) == ("DPM++ 2M", "Automatic") and "'Align Your Steps' is not available" in note
    sampler, schedule, note = sampler_from_infotext("Euler a", "Karras")
    assert (sampler, schedule) == ("Euler a", "Automatic") and "not available with Euler a" in note
