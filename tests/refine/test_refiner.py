"""A1111's Refiner: another model of the family takes over the denoise at "Switch at" of the steps. Each model loads
once a run; a refiner with the model's own weights continues the schedule exactly (deterministic samplers); the
readout counts on; A1111's infotext keys; what is refused before anything loads."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import GenerationCancelled, InvalidRequest
from pipelines.generate import CancelToken
from pipelines.infotext import parse_infotext
from pipelines.telemetry import StageEnded, StepDone
from tests.tiny_models import build_tiny_sd15, copy_model, save_tiny_pipeline, tiny_request


@pytest.fixture(scope="module")
def models(tmp_path_factory, model_zoo, tiny_pipes):
    """Each family's tiny model and a twin (the same weights under another name); another SD 1.5 model with other
    weights; a LoRA of the SD 1.5 architecture; so a refiner that is the twin must give the one-model picture, bit for bit."""
    from tests.lora.make_loras import write_lora

    root = tmp_path_factory.mktemp("refiner-models")
    write_lora(root / "Lora", "sd15-kohya", tiny_pipes["sd15"], "sd15", "kohya", seed=1)
    for family in ("sd15", "sdxl", "flux"):
        copy_model(model_zoo[family], root, f"tiny-{family}")
        copy_model(model_zoo[family], root, f"twin-{family}")
    save_tiny_pipeline(build_tiny_sd15(seed=77), root / "other-sd15")
    return root


@pytest.fixture()
def manager(make_manager, models):
    return make_manager(models, latent_cache_entries=0)


def pixels(result, index: int = 0) -> np.ndarray:
    return np.asarray(result.images[index].image, dtype=np.int16)


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_a_refiner_with_the_same_weights_continues_the_schedule_exactly(manager, family):
    """The first model stops after the switch step and the refiner goes on through the same schedule: with the same
    weights and a deterministic sampler (Euler, Flow Euler) that is the one-model run, pixel for pixel."""
    base = tiny_request(family, seed=3, steps=5, save=False)
    alone = manager.generate(base)
    refined = manager.generate(tiny_request(family, seed=3, steps=5, save=False, refiner_checkpoint=f"twin-{family}", refiner_switch_at=0.6))
    assert np.array_equal(pixels(alone), pixels(refined))
    params = parse_infotext(refined.images[0].infotext)
    assert params["Model"] == f"tiny-{family}" and params["Refiner"] == f"twin-{family}"
    assert params["Refiner switch at"] == "0.6" and params["Refiner switch by sampling steps"] == "True"
    assert "Refiner" not in parse_infotext(alone.images[0].infotext)


def test_the_prompts_lora_applies_on_both_models(manager):
    """The prompt's LoRA goes on the refiner too: with the twin, the LoRA picture is the one-model LoRA picture (a
    refiner without it would not be), and the plain picture differs from it. Fused or not is the fuse policy's call
    for each model (the same computation up to float rounding): a pixel may differ by one."""
    tagged = dict(seed=3, steps=5, save=False, prompt="a lighthouse <lora:sd15-kohya:1>")
    alone = manager.generate(tiny_request("sd15", **tagged))
    refined = manager.generate(tiny_request("sd15", **tagged, refiner_checkpoint="twin-sd15", refiner_switch_at=0.6))
    assert np.abs(pixels(alone) - pixels(refined)).max() <= 1
    plain = manager.generate(tiny_request("sd15", seed=3, steps=5, save=False, prompt="a lighthouse", refiner_checkpoint="twin-sd15",
                                          refiner_switch_at=0.6))
    assert np.abs(pixels(plain) - pixels(refined)).mean() > 1
    assert "sd15-kohya" in parse_infotext(refined.images[0].infotext)["Lora hashes"]


def test_the_refiner_takes_the_last_steps_each_model_loaded_once(manager):
    events = []
    result = manager.generate(tiny_request("sd15", seed=4, steps=10, batch_count=2, save=False, refiner_checkpoint="other-sd15"),
                              listener=events.append)
    alone = manager.generate(tiny_request("sd15", seed=4, steps=10, batch_count=2, save=False))
    assert [img.seed for img in result.images] == [4, 5]
    for index in range(2):  # the last 2 of 10 steps on other weights: another picture
        assert not np.array_equal(pixels(result, index), pixels(alone, index))
    # Both batches' 8 steps on the model, then both batches' last 2 on the refiner: counted on to 20.
    steps = [e.index for e in events if isinstance(e, StepDone)]
    assert steps == list(range(1, 21)) and {e.total for e in events if isinstance(e, StepDone)} == {20}
    ended = [e for e in events if isinstance(e, StageEnded)]
    assert [e.stage for e in ended].count("model load") == 2  # one per model, not per batch
    assert [e.detail for e in ended if e.stage == "refiner"] == ["steps 9-10 on other-sd15"] * 2
    assert [e.detail for e in ended if e.stage == "denoise"] == ["the refiner takes over after step 8"] * 2
    assert result.kept_latents.model == "other-sd15"  # Re-decode uses the VAE that decoded them


def test_img2img_hands_over_within_the_steps_its_strength_runs(manager):
    """img2img at strength 0.5 of 10 steps runs steps 6-10; Switch at 0.6 of those 5: 3 on the model, 2 on the refiner."""
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    picture = Image.fromarray(np.stack([np.tile(ramp, (64, 1))] * 3, axis=-1))
    fields = dict(seed=2, steps=10, init_image=picture, denoising_strength=0.5, save=False)
    events = []
    twin = manager.generate(tiny_request("sd15", **fields, refiner_checkpoint="twin-sd15", refiner_switch_at=0.6), listener=events.append)
    assert np.array_equal(pixels(twin), pixels(manager.generate(tiny_request("sd15", **fields))))
    ended = {e.stage: e.detail for e in events if isinstance(e, StageEnded)}
    assert ended["refiner"] == "steps 9-10 on twin-sd15" and ended["denoise"].endswith("the refiner takes over after step 8")
    assert [e.index for e in events if isinstance(e, StepDone)] == [1, 2, 3, 4, 5]
    other = manager.generate(tiny_request("sd15", **fields, refiner_checkpoint="other-sd15", refiner_switch_at=0.6))
    assert not np.array_equal(pixels(twin), pixels(other))


def test_a_multistep_sampler_and_the_hires_pass_run_on_the_refiner(manager):
    """DPM++ 2M restarts its history at the switch (close, not identical); the hires pass then runs on the refiner, as
    in A1111 where the refiner is the loaded model by then: no Hires checkpoint key."""
    events = []
    result = manager.generate(tiny_request("sd15", seed=1, steps=6, sampler="DPM++ 2M", hires_scale=2.0, hires_denoising=0.5, save=False,
                                           refiner_checkpoint="other-sd15", refiner_switch_at=0.5), listener=events.append)
    ended = {e.stage: e.detail for e in events if isinstance(e, StageEnded)}
    assert ended["refiner"] == "steps 4-6 on other-sd15" and ended["hires pass"].startswith("on other-sd15, 2x Latent")
    assert [e.index for e in events if isinstance(e, StepDone)] == list(range(1, 10))  # 3 + 3, then the hires pass's 3
    assert result.images[0].image.size == (128, 128)
    params = parse_infotext(result.images[0].infotext)
    assert params["Refiner"] == "other-sd15" and "Hires checkpoint" not in params
    # The refiner named as the hires checkpoint too is the same run.
    again = manager.generate(tiny_request("sd15", seed=1, steps=6, sampler="DPM++ 2M", hires_scale=2.0, hires_denoising=0.5, save=False,
                                          refiner_checkpoint="other-sd15", refiner_switch_at=0.5, hires_checkpoint="other-sd15"))
    assert np.array_equal(pixels(result), pixels(again))


def test_skip_on_the_model_drops_that_batch_and_stop_on_the_refiner_ends_the_run(manager):
    cancel = CancelToken()

    def skip_first(event):
        if isinstance(event, StepDone) and event.index == 2:
            cancel.skip()

    result = manager.generate(tiny_request("sd15", steps=4, batch_count=2, save=False, refiner_checkpoint="other-sd15", refiner_switch_at=0.5),
                              listener=skip_first, cancel=cancel)
    assert [img.seed for img in result.images] == [2]
    stop = CancelToken()

    def stop_on_refiner(event):
        if isinstance(event, StepDone) and event.index == 5:  # the refiner's first step
            stop.cancel()

    with pytest.raises(GenerationCancelled):
        manager.generate(tiny_request("sd15", steps=4, batch_count=2, save=False, refiner_checkpoint="other-sd15", refiner_switch_at=0.5),
                         listener=stop_on_refiner, cancel=stop)


def test_refused_before_anything_loads(manager):
    cases = [
        (dict(refiner_checkpoint="nope"), r"The refiner 'nope' is not installed; Stable Diffusion 1.5 models here: .*other-sd15"),
        (dict(refiner_checkpoint="tiny-sdxl"), r"The refiner 'tiny-sdxl' is Stable Diffusion XL, the first pass's model 'tiny-sd15' Stable "
                                               r"Diffusion 1.5: the refiner goes on from the model's latents"),
        (dict(refiner_checkpoint="other-sd15", sampler="Heun"), r"cannot take over from Heun mid-way"),
        (dict(refiner_checkpoint="other-sd15", hires_scale=2.0, hires_checkpoint="twin-sd15"), r"the hires pass runs on the refiner"),
        (dict(refiner_checkpoint="other-sd15", refiner_switch_at=1.5), r"Refiner switch at must be between 0.01 and 1"),
        (dict(refiner_checkpoint=["other-sd15"]), r"The refiner checkpoint must be a model's name"),
        (dict(refiner_checkpoint="other-sd15", init_image=Image.new("RGB", (64, 64)), mask=Image.new("L", (64, 64), 255)),
         r"not inpainting"),
    ]
    for fields, message in cases:
        with pytest.raises(InvalidRequest, match=message):
            manager.generate(tiny_request("sd15", steps=10, save=False, **fields))
    assert manager.last_load("tiny-sd15") is None and manager.last_load("other-sd15") is None


def test_no_step_left_for_the_refiner_is_a_note_and_one_model(manager):
    events = []
    result = manager.generate(tiny_request("sd15", steps=4, save=False, refiner_checkpoint="other-sd15", refiner_switch_at=1.0,
                                           approximate_cache=True), listener=events.append)
    assert "Refiner switch at 1 of 4 steps leaves the refiner no step: it was not used." in result.warnings
    assert manager.last_load("other-sd15") is None and "Refiner" not in parse_infotext(result.images[0].infotext)
    # "None" (A1111's choice) and the model's own name are no refiner; a refiner turns the approximate cache off.
    for name in ("None", "tiny-sd15"):
        assert "Refiner" not in parse_infotext(manager.generate(tiny_request("sd15", steps=10, save=False, refiner_checkpoint=name)).images[0].infotext)
    noted = manager.generate(tiny_request("sd15", steps=10, save=False, refiner_checkpoint="other-sd15", approximate_cache=True))
    assert any("approximate cache is off with a refiner" in note for note in noted.warnings)
