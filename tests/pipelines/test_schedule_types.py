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


# Align Your Steps' levels in A1111's get_align_your_steps_sigmas.
AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]


def a1111_sigmas(schedule: str, n: int, sdxl: bool = False) -> np.ndarray:
    """A1111's formulas (modules/sd_schedulers.py, k-diffusion's get_sigmas_*), written out: the n noise levels of n
    steps (the final 0 left off; KL Optimal's own last level, the smallest, too)."""
    sigmas = model_sigmas()
    low, high = sigmas[0], sigmas[-1]
    if schedule in ("Uniform", "Normal"):  # get_sigmas(n) / normal_scheduler: t evenly from 999 to 0 (whole numbers at n = 10)
        return sigmas[np.linspace(999, 0, n).round().astype(int)]
    if schedule == "Karras":
        rho = 7.0
        return (high ** (1 / rho) + np.linspace(0, 1, n) * (low ** (1 / rho) - high ** (1 / rho))) ** rho
    if schedule in ("Exponential", "Polyexponential"):  # polyexponential at A1111's default rho 1
        return np.exp(np.linspace(np.log(high), np.log(low), n))
    if schedule == "Beta":  # A1111's defaults: alpha = beta = 0.6
        return low + np.array([scipy.stats.beta.ppf(x, 0.6, 0.6) for x in 1 - np.linspace(0, 1, n)]) * (high - low)
    if schedule == "KL Optimal":
        i = np.arange(n + 1)
        return np.tan(i / n * np.arctan(low) + (1.0 - i / n) * np.arctan(high))[:n]
    if schedule == "Align Your Steps":
        table = AYS_SDXL if sdxl else AYS_SD15
        if n == len(table):
            return np.array(table)
        ys = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(table)), np.log(table[::-1]))
        return np.exp(ys)[::-1]
    if schedule == "Simple":
        ss = len(sigmas) / n
        return np.array([sigmas[-(1 + int(x * ss))] for x in range(n)])
    if schedule == "DDIM":
        picked, ss, x = [], max(len(sigmas) // n, 1), 1
        while x < len(sigmas):
            picked.append(sigmas[x])
            x += ss
        return np.array(picked[::-1])
    raise ValueError(schedule)


def made(sampler_name: str, schedule: str, steps: int = STEPS):
    import diffusers

    base = diffusers.EulerDiscreteScheduler(**MODEL_CONFIG).config
    scheduler = find_sampler(Family.SD15, sampler_name).make(base, schedule)
    scheduler.set_timesteps(steps)
    return scheduler


def step_sigmas(scheduler) -> np.ndarray:
    """The noise level at the start of each step: the second-order KDPM2 schedulers interleave a midpoint per step."""
    import diffusers

    sigmas = np.asarray(scheduler.sigmas, dtype=np.float64)
    if isinstance(scheduler, (diffusers.KDPM2DiscreteScheduler, diffusers.KDPM2AncestralDiscreteScheduler, diffusers.HeunDiscreteScheduler,
                              diffusers.DPMSolverSDEScheduler)):
        sigmas = np.concatenate([sigmas[:1], sigmas[1:-1:2]])  # s0, then each step's repeated start
    return sigmas[:STEPS]


FORMULAS = ("Uniform", "Karras", "Exponential", "Polyexponential", "KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")
FORMULA_CASES = [(s.name, schedule) for s in UNET_SAMPLERS for schedule in FORMULAS
                 if schedule in s.schedules and s.name != "DDIM"]  # DDIM steps through timesteps, not noise levels: below


def test_every_unet_sampler_but_ddim_and_lcm_runs_every_schedule_type():
    assert {s.name for s in UNET_SAMPLERS if set(FORMULAS) <= set(s.schedules)} == {s.name for s in UNET_SAMPLERS} - {"DDIM", "LCM"}


@pytest.mark.parametrize("sampler_name, schedule", FORMULA_CASES)
def test_each_schedule_type_spaces_the_noise_levels_as_a1111s_formula(sampler_name, schedule):
    """From the model's largest noise level to its smallest, as A1111's (its sigma_min/max are the model's), though the
    model's config spaces its own timesteps another way ("leading" starts lower)."""
    scheduler = made(sampler_name, schedule)
    np.testing.assert_allclose(step_sigmas(scheduler), a1111_sigmas(schedule, STEPS), rtol=1e-4)
    assert float(scheduler.sigmas[-1]) == 0.0  # the last step lands on the clean picture, as A1111's appended 0


@pytest.mark.parametrize("sampler_name", ["Euler", "Euler a", "DPM++ 2M", "Heun"])
@pytest.mark.parametrize("steps", [11, 20, 7])
def test_align_your_steps_takes_the_models_own_table_and_stretches_it(sampler_name, steps):
    """SDXL's levels for SDXL, SD 1.5's for the rest; 11 steps take the table as it is, others interpolate in log sigma."""
    import diffusers

    base = diffusers.EulerDiscreteScheduler(**MODEL_CONFIG).config
    for family, sdxl in ((Family.SDXL, True), (Family.SD15, False)):
        scheduler = find_sampler(family, sampler_name).make(base, "Align Your Steps", family)
        scheduler.set_timesteps(steps)
        sigmas = np.asarray(scheduler.sigmas, dtype=np.float64)
        if len(sigmas) > steps + 1:  # second order: s0, then each step's repeated start
            sigmas = np.concatenate([sigmas[:1], sigmas[1:-1:2]])
        np.testing.assert_allclose(sigmas[:steps], a1111_sigmas("Align Your Steps", steps, sdxl), rtol=1e-4)


def test_the_model_is_told_the_timestep_of_each_level():
    """A schedule computed here feeds the model k-diffusion's sigma_to_t of each level (Euler a's too, set after its own
    set_timesteps): the picture depends on it as much as on the levels."""
    sigmas = model_sigmas()
    for sampler_name in ("Euler", "Euler a"):
        scheduler = made(sampler_name, "KL Optimal")
        wanted = np.interp(np.log(a1111_sigmas("KL Optimal", STEPS)), np.log(sigmas), np.arange(1000))
        np.testing.assert_allclose(np.asarray(scheduler.timesteps, dtype=np.float64), wanted, rtol=1e-4, atol=1e-3)


def test_ddim_schedule_keeps_the_steps_asked_where_a1111_adds_one():
    """At 30 steps A1111's ddim schedule lists 31 levels (stride 33 fits 31 times in 1000); here the lowest 30, the
    count the readout and the PNG say."""
    assert len(a1111_sigmas("DDIM", 30)) == 31
    sigmas = np.asarray(made("Euler", "DDIM", steps=30).sigmas, dtype=np.float64)
    np.testing.assert_allclose(sigmas[:30], a1111_sigmas("DDIM", 30)[1:], rtol=1e-4)


def test_a_scheduler_made_again_from_its_config_keeps_the_schedule():
    """Pipelines copy schedulers with type(s).from_config(s.config) (diffusers' img2img and inpaint do): the class
    carries the schedule."""
    scheduler = made("DPM++ 2M", "Align Your Steps")
    again = type(scheduler).from_config(scheduler.config)
    again.set_timesteps(STEPS)
    np.testing.assert_array_equal(np.asarray(again.sigmas), np.asarray(scheduler.sigmas))


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
    ("DDIM", "Karras", "Schedule type Karras is not available with DDIM .*choose one of: Automatic, Uniform, SGM Uniform"),
    ("LCM", "SGM Uniform", "not available with LCM .*choose one of: Automatic\\."),
    ("Euler", "Karras Exponential", "Schedule type must be one of: Automatic, Uniform, Karras, Exponential, Polyexponential, SGM Uniform, "
                                    "KL Optimal, Align Your Steps, Simple, Normal, DDIM, Beta; got 'Karras Exponential'"),
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
    assert sampler_from_infotext("Euler", "Simple", Family.FLUX) == ("Flow Euler", "Automatic", None)  # Forge's FLUX
    assert sampler_from_infotext("Euler", "Simple", Family.SDXL) == ("Euler", "Simple", None)  # A1111's
    assert sampler_from_infotext("Euler", None, Family.FLUX) == ("Flow Euler", "Automatic", None)
    sampler, schedule, note = sampler_from_infotext("Euler", "Karras", Family.FLUX)
    assert (sampler, schedule) == ("Flow Euler", "Automatic") and "Schedule type Karras was not used" in note
    assert sampler_from_infotext("DPM++ 2M", "Align Your Steps") == ("DPM++ 2M", "Align Your Steps", None)
    assert sampler_from_infotext("Euler a", "KL Optimal") == ("Euler a", "KL Optimal", None)
    sampler, schedule, note = sampler_from_infotext("DPM++ 2M", "Karras Exponential")  # A1111's dev branch has it
    assert (sampler, schedule) == ("DPM++ 2M", "Automatic") and "'Karras Exponential' is not available" in note
    sampler, schedule, note = sampler_from_infotext("DDIM", "Karras")
    assert (sampler, schedule) == ("DDIM", "Automatic") and "not available with DDIM" in note


@pytest.mark.parametrize("family, sampler", [("sd15", "Euler a"), ("sd15", "DPM++ 2M"), ("sdxl", "Heun")])
def test_schedules_computed_here_run_and_are_written_in_the_png(shared_manager, family, sampler):
    """Euler a (levels set after diffusers' own set_timesteps), a multistep and a second-order sampler (the Karras hook)
    on schedules diffusers has no setting for; each draws its own picture and the PNG names it (A1111's label)."""
    base = tiny_request(family, sampler=sampler, steps=4, seed=7, save=False)
    pictures = {"Automatic": pixels(shared_manager.generate(base).images[0].image)}
    for schedule in ("KL Optimal", "Align Your Steps", "Simple"):
        made = shared_manager.generate(dataclasses.replace(base, schedule_type=schedule)).images[0]
        assert parse_infotext(made.infotext)["Schedule type"] == schedule
        pictures[schedule] = pixels(made.image)
    # Seeded runs repeat to the bit, so any difference is the schedule's (the tiny random SDXL barely reacts to it).
    assert all(not np.array_equal(pictures[a], pictures[b]) for a in pictures for b in pictures if a < b), "two schedules drew one picture"


def test_a_hires_pass_steps_through_a_computed_schedule(shared_manager):
    """The hires pass is diffusers' img2img: it starts part way down the computed levels (the pipeline's own copy of
    the scheduler, begin index and all)."""
    base = tiny_request("sd15", sampler="Euler a", steps=4, seed=3, save=False, hires_scale=1.5, hires_steps=4, hires_denoising=0.5)
    own = shared_manager.generate(base).images[0]
    kl = shared_manager.generate(dataclasses.replace(base, hires_schedule_type="KL Optimal")).images[0]
    assert parse_infotext(kl.infotext)["Hires schedule type"] == "KL Optimal"
    assert kl.image.size == own.image.size and np.abs(pixels(kl.image) - pixels(own.image)).max() > 2
    both = shared_manager.generate(dataclasses.replace(base, schedule_type="Align Your Steps")).images[0]  # the img2img pipeline
    assert parse_infotext(both.infotext)["Schedule type"] == "Align Your Steps"  # from_pipe shares the loaded scheduler
    assert "Hires schedule type" not in parse_infotext(both.infotext) and not np.array_equal(pixels(both.image), pixels(own.image))
