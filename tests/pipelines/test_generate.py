"""Generation through the manager for SD 1.5, SDXL and FLUX.1 tiny models: sizes, seeds, files, stages."""
from __future__ import annotations

import dataclasses

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.infotext import parse_infotext
from pipelines.request import MAX_SEED
from pipelines.samplers import UNET_SAMPLERS
from tests.tiny_models import FAMILIES, SIZES, tiny_request

CORE_STAGES = {"text encode", "denoise", "VAE decode"}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_each_family_end_to_end(shared_manager, family):
    today_before = dt.date.today().isoformat()
    result = shared_manager.generate(tiny_request(family, seed=4242, steps=3))
    today_after = dt.date.today().isoformat()
    size = SIZES[family]

    assert len(result.images) == 1
    generated = result.images[0]
    assert generated.image.size == (size, size)
    assert generated.image.mode == "RGB"
    assert pixels(generated.image).std() > 1, "a flat image means the decode produced nothing"
    assert result.seeds == [4242]
    assert result.request.width == size and result.request.height == size
    assert len(result.step_seconds) == 3
    assert result.device == "cpu" and result.denoiser_dtype == "fp32" and result.vae_dtype == "fp32"
    assert CORE_STAGES | {"save"} <= set(result.stage_seconds)
    assert all(seconds >= 0 for seconds in result.stage_seconds.values())
    assert result.total_seconds >= sum(v for k, v in result.stage_seconds.items() if k in CORE_STAGES)
    assert result.peak_memory_bytes > 0 and result.memory_kind == "process RSS"

    # The infotext records what was asked and what ran.
    params = parse_infotext(generated.infotext)
    assert params["Prompt"] == "a portrait photo"
    assert params["Seed"] == "4242"
    assert params["Steps"] == "3"
    assert params["Size"] == f"{size}x{size}"
    assert params["Model"] == f"tiny-{family}"

    # Saved as outputs/<date>/<number>-<seed>.png with the same infotext in its `parameters` chunk.
    path = Path(generated.path)
    assert path.is_file()
    assert path.parent.parent == Path(shared_manager.config.outputs_dir)
    assert path.parent.name in (today_before, today_after)
    assert re.fullmatch(r"\d{5}-4242\.png", path.name)
    with Image.open(path) as saved:
        assert saved.size == (size, size)
        assert saved.info["parameters"] == generated.infotext
        assert np.array_equal(pixels(saved), pixels(generated.image))


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_bytes_other_seed_other_image(shared_manager, family):
    first = shared_manager.generate(tiny_request(family, seed=77, save=False)).images[0].image
    repeat = shared_manager.generate(tiny_request(family, seed=77, save=False))
    again = repeat.images[0].image
    other = shared_manager.generate(tiny_request(family, seed=78, save=False)).images[0].image
    assert len(repeat.step_seconds) == 2, "the repeat must really denoise (latent cache is off here)"
    assert first.tobytes() == again.tobytes()
    assert np.abs(pixels(first) - pixels(other)).mean() > 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_reaches_the_denoiser(shared_manager, family):
    """Same seed, another prompt: the conditioning must change the image (text encoders are wired in)."""
    cat = shared_manager.generate(tiny_request(family, prompt="a cat", seed=5, save=False)).images[0].image
    dog = shared_manager.generate(tiny_request(family, prompt="a dog in the studio", seed=5, save=False)).images[0].image
    assert cat.tobytes() != dog.tobytes()


def test_random_seed_is_real_and_recorded(shared_manager):
    first = shared_manager.generate(tiny_request("sd15", seed=-1))
    second = shared_manager.generate(tiny_request("sd15", seed=-1))
    seed = first.seeds[0]
    assert 0 <= seed <= MAX_SEED
    assert first.seeds != second.seeds  # 1 in 2**32 to collide
    assert parse_infotext(first.images[0].infotext)["Seed"] == str(seed)
    assert Path(first.images[0].path).name.endswith(f"-{seed}.png")
    assert first.summary()["seeds"] == [seed]
    # The recorded seed reproduces the image.
    replay = shared_manager.generate(tiny_request("sd15", seed=seed, save=False))
    assert replay.images[0].image.tobytes() == first.images[0].image.tobytes()


def test_batches_use_consecutive_seeds_and_distinct_files(shared_manager):
    result = shared_manager.generate(tiny_request("sd15", seed=1000, batch_size=2, batch_count=2))
    assert result.seeds == [1000, 1001, 1002, 1003]
    assert len(result.step_seconds) == 2 * 2  # steps x batch_count
    paths = [Path(img.path) for img in result.images]
    assert len(set(paths)) == 4 and all(p.is_file() for p in paths)
    assert [p.name.split("-")[1] for p in paths] == ["1000.png", "1001.png", "1002.png", "1003.png"]
    numbers = [int(p.name[:5]) for p in paths]
    assert numbers == sorted(numbers) and len(set(numbers)) == 4
    # Each image of a batch matches the same seed generated alone (A1111's seed semantics).
    alone = shared_manager.generate(tiny_request("sd15", seed=1001, save=False)).images[0].image
    assert np.abs(pixels(alone) - pixels(result.images[1].image)).max() <= 1
    assert [parse_infotext(img.infotext)["Seed"] for img in result.images] == ["1000", "1001", "1002", "1003"]


def test_save_false_writes_nothing(shared_manager, tmp_path):
    outputs = Path(shared_manager.config.outputs_dir)
    before = sorted(outputs.rglob("*.png"))
    result = shared_manager.generate(tiny_request("sd15", save=False))
    assert result.images[0].path is None
    assert "save" not in result.stage_seconds
    assert sorted(outputs.rglob("*.png")) == before


# A1111's own defaults for the Automatic schedule type (its samplers' options["scheduler"], 1.10); the rest: none.
A1111_AUTOMATIC = {"DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM2": "Karras", "DPM2 a": "Karras",
                   "DPM++ 2M SDE": "Exponential", "DPM++ 3M SDE": "Exponential"}


@pytest.mark.parametrize("sampler", [s.name for s in UNET_SAMPLERS])
def test_every_unet_sampler_generates(shared_manager, sampler):
    """On the Automatic schedule type, each runs A1111's default for it and writes that in the PNG, as A1111 does."""
    result = shared_manager.generate(tiny_request("sd15", sampler=sampler, save=False))
    params = parse_infotext(result.images[0].infotext)
    assert params["Sampler"] == sampler
    assert params["Schedule type"] == A1111_AUTOMATIC.get(sampler, "Automatic")
    assert pixels(result.images[0].image).std() > 1


@pytest.mark.parametrize("sampler", ["DPM++ 2M SDE Karras", "LCM", "DPM++ 3M SDE", "DPM++ SDE Karras", "DPM2 a"])
def test_samplers_that_add_noise_each_step_keep_a1111_seeds(shared_manager, sampler):
    """Their per-step noise comes from each image's own seed: a batch's second image is the next seed drawn alone,
    and a repeat draws the same pixels."""
    batch = shared_manager.generate(tiny_request("sd15", sampler=sampler, seed=500, steps=3, batch_size=2, save=False))
    alone = shared_manager.generate(tiny_request("sd15", sampler=sampler, seed=501, steps=3, save=False)).images[0].image
    assert np.abs(pixels(alone) - pixels(batch.images[1].image)).max() <= 1
    assert np.abs(pixels(batch.images[0].image) - pixels(batch.images[1].image)).max() > 1


@pytest.mark.parametrize("sampler", ["Heun", "DPM2 Karras", "DPM++ SDE"])
def test_second_order_samplers_count_steps_not_denoiser_calls(shared_manager, sampler):
    """Two denoiser calls a step (the last step one): the readout, the step times and the hooks' step index count the
    sampler's steps, 1..N, as A1111 shows them; a repeat draws the same pixels (DPM++ SDE's Brownian tree is seeded)."""
    from pipelines.telemetry import StepDone
    from tests.tiny_models import recorded_calls

    events = []
    request = tiny_request("sd15", sampler=sampler, seed=21, steps=4, save=False)
    with recorded_calls(shared_manager, request.model) as (_pipe, calls):
        result = shared_manager.generate(request, listener=events.append)
    assert len(calls) == 2 * 4 - 1
    assert [e.index for e in events if isinstance(e, StepDone)] == [1, 2, 3, 4]
    assert len(result.step_seconds) == 4 and result.denoise_summary().startswith("4 steps")
    again = shared_manager.generate(request)
    assert np.array_equal(pixels(again.images[0].image), pixels(result.images[0].image))
    other = shared_manager.generate(dataclasses.replace(request, seed=22))
    assert not np.array_equal(pixels(other.images[0].image), pixels(result.images[0].image))


def test_second_order_samplers_run_img2img_and_say_the_approximate_cache_is_off(make_manager, shared_models_dir, tmp_path):
    from PIL import Image

    manager = make_manager(shared_models_dir, cache_dir=tmp_path / "cache")
    result = manager.generate(tiny_request("sd15", sampler="DPM2 a Karras", steps=6, approximate_cache=True, save=False))
    assert "second-order sampler" in result.cache_notes["approx cache"]
    init = Image.new("RGB", (64, 64), (90, 120, 200))
    img2img = manager.generate(tiny_request("sd15", sampler="Heun", steps=6, init_image=init, denoising_strength=0.5, save=False))
    assert len(img2img.step_seconds) == 3, "the last int(6 x 0.5) steps, counted as steps"


def test_sampler_name_is_case_insensitive_and_canonicalised(shared_manager):
    result = shared_manager.generate(tiny_request("sd15", sampler="euler A", save=False))
    assert result.request.sampler == "Euler a"


def test_flux_warns_that_negative_prompt_is_ignored(shared_manager):
    result = shared_manager.generate(tiny_request("flux", negative_prompt="blurry", save=False))
    assert any("negative prompt" in w and "FLUX" in w for w in result.warnings)


def test_sdxl_negative_prompt_changes_the_image(shared_manager):
    plain = shared_manager.generate(tiny_request("sdxl", seed=9, save=False)).images[0].image
    negative = shared_manager.generate(tiny_request("sdxl", seed=9, negative_prompt="red", save=False)).images[0].image
    assert plain.tobytes() != negative.tobytes()


def test_summary_is_json_serialisable(shared_manager):
    import json

    result = shared_manager.generate(tiny_request("sd15", seed=3, save=False))
    summary = json.loads(json.dumps(result.summary()))
    assert summary["seeds"] == [3]
    assert summary["request"]["model"] == "tiny-sd15"
    assert set(summary["stage_seconds"]) >= CORE_STAGES


def test_exact_repeat_from_the_latent_cache_is_identical(make_manager, shared_models_dir):
    manager = make_manager(shared_models_dir, latent_cache_entries=4)
    first = manager.generate(tiny_request("sd15", seed=61, save=False))
    steps: list = []
    repeat = manager.generate(tiny_request("sd15", seed=61, save=False), listener=steps.append)
    assert repeat.images[0].image.tobytes() == first.images[0].image.tobytes()
    assert repeat.cache_notes.get("latent cache", "").startswith("hit")
    assert repeat.step_seconds == [] and not any(type(e).__name__ == "StepDone" for e in steps)
    changed = manager.generate(tiny_request("sd15", seed=61, steps=3, save=False))
    assert len(changed.step_seconds) == 3, "another step count is not an exact repeat"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cfg", [1.0, 0.0])
def test_guidance_of_one_or_less_generates(shared_manager, family, cfg):
    """CFG 1 (turbo/LCM-style models) turns classifier-free guidance off; it must still generate.

    Regression: the prompt-memo path moved every embedding to the device, and without CFG the
    SD/SDXL negative embeddings are None (AttributeError).
    """
    result = shared_manager.generate(tiny_request(family, cfg_scale=cfg, save=False))
    assert result.images[0].image.size == (SIZES[family], SIZES[family])
    assert parse_infotext(result.images[0].infotext)["CFG scale"] == f"{cfg:g}"


@pytest.mark.parametrize("family", FAMILIES)
def test_empty_prompt_generates(shared_manager, family):
    result = shared_manager.generate(tiny_request(family, prompt="", save=False))
    assert result.images[0].image.size == (SIZES[family], SIZES[family])
    assert parse_infotext(result.images[0].infotext)["Prompt"] == ""


def test_every_recorded_seed_can_be_requested_again(shared_manager):
    from pipelines.families import Family
    from pipelines.request import validate_request

    """Regression: seed + i was not wrapped, so MAX_SEED with batch_size 2 recorded 2**32 (refused)."""
    result = shared_manager.generate(tiny_request("sd15", seed=MAX_SEED, batch_size=2, save=False))
    assert all(0 <= seed <= MAX_SEED for seed in result.seeds)
    assert len(set(result.seeds)) == 2
    for image in result.images:
        seed = int(parse_infotext(image.infotext)["Seed"])
        validate_request(tiny_request("sd15", seed=seed), Family.SD15)


def test_stop_in_the_second_batch_keeps_the_first(shared_manager):
    from pipelines.errors import GenerationCancelled
    from pipelines.generate import CancelToken
    from pipelines.telemetry import StepDone

    cancel = CancelToken()

    def listener(event):
        if isinstance(event, StepDone) and event.index == 3:  # first step of batch 2 (2 steps per batch)
            cancel.cancel()

    with pytest.raises(GenerationCancelled) as raised:
        shared_manager.generate(tiny_request("sd15", seed=500, batch_count=3), listener=listener, cancel=cancel)
    partial = raised.value.partial
    assert [img.seed for img in partial] == [500]
    assert partial[0].path and Path(partial[0].path).is_file(), "the finished batch was saved before the stop"


def test_skip_drops_only_the_current_batch(shared_manager):
    from pipelines.generate import CancelToken
    from pipelines.telemetry import Notice, StepDone

    cancel = CancelToken()
    notes: list[str] = []

    def listener(event):
        if isinstance(event, StepDone) and event.index == 1:
            cancel.skip()
        if isinstance(event, Notice):
            notes.append(event.text)

    result = shared_manager.generate(tiny_request("sd15", seed=700, batch_count=2, save=False), listener=listener, cancel=cancel)
    assert result.seeds == [701]
    assert "Skipped batch 1 of 2." in notes
    # The kept image is the one seed 701 gives on its own.
    alone = shared_manager.generate(tiny_request("sd15", seed=701, save=False))
    assert alone.images[0].image.tobytes() == result.images[0].image.tobytes()


def test_every_sampler_names_a_diffusers_scheduler():
    """The list names its schedulers (pipelines/samplers.py imports no diffusers): each name must be one."""
    import diffusers

    from pipelines.samplers import FLOW_SAMPLERS

    for sampler in UNET_SAMPLERS + FLOW_SAMPLERS:
        scheduler = getattr(diffusers, sampler.scheduler, None)
        assert scheduler is not None and issubclass(scheduler, diffusers.SchedulerMixin), sampler
