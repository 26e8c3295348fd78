"""Hires fix through the manager on the tiny SD 1.5 / SDXL / FLUX.1 models: the output size, both passes in
the breakdown and the readout, each upscaler (Latent, Lanczos, an ESRGAN file), A1111's infotext keys,
Stop/Skip inside the pass, LoRA and DeepCache with it, and the bad input it refuses."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipelines.errors import GenerationCancelled, InvalidRequest
from pipelines.generate import CancelToken
from pipelines.infotext import parse_infotext
from pipelines.request import hires_size
from pipelines.stages.hires import upscale_latents
from pipelines.telemetry import Notice, StepDone
from pipelines.upscale import forget_loaded
from tests.lora.make_loras import write_lora
from tests.tiny_models import SIZES, copy_model, tiny_request
from tests.upscale import tiny_state, write_esrgan

FAMILIES = ("sd15", "sdxl", "flux")
SCALES = {"sd15": 2.0, "sdxl": 1.25, "flux": 1.25}  # 64 -> 128, 256 -> 320: small enough for the CPU


@pytest.fixture(scope="module")
def hires_models(tmp_path_factory, model_zoo, tiny_pipes):
    models = tmp_path_factory.mktemp("hires-models")
    for family in FAMILIES:
        copy_model(model_zoo[family], models, f"tiny-{family}")
    write_lora(models / "Lora", "sd15-kohya", tiny_pipes["sd15"], "sd15", "kohya", seed=1)
    write_esrgan(models / "ESRGAN" / "tiny_x4.safetensors", tiny_state(4, seed=1))
    broken = tiny_state(2, seed=2)
    del broken["body.1.rdb1.conv2.weight"]
    write_esrgan(models / "ESRGAN" / "broken_x2.safetensors", broken)
    return models


@pytest.fixture(scope="module")
def manager(tmp_path_factory, hires_models, demo_cache_dir):
    from pipelines.manager import ManagerConfig, PipelineManager

    forget_loaded()
    yield PipelineManager(ManagerConfig(models_dir=hires_models, outputs_dir=tmp_path_factory.mktemp("hires-out"), cache_dir=demo_cache_dir,
                                        device="cpu", include_hf_cache=False, latent_cache_entries=0))
    forget_loaded()


def hires_request(family: str = "sd15", **fields):
    values = dict(seed=4, steps=4, hires_scale=SCALES[family], hires_denoising=0.5, save=False)
    values.update(fields)
    return tiny_request(family, **values)


def pixels(result, index: int = 0) -> np.ndarray:
    return np.asarray(result.images[index].image, dtype=np.int16)


@pytest.mark.parametrize("family", FAMILIES)
def test_output_is_scale_times_the_size_with_both_passes_in_the_breakdown_and_the_readout(manager, family):
    events: list[StepDone] = []
    result = manager.generate(hires_request(family), listener=lambda e: events.append(e) if isinstance(e, StepDone) else None)
    size = int(SIZES[family] * SCALES[family])
    assert result.images[0].image.size == (size, size)
    assert {"denoise", "hires pass", "VAE decode"} <= set(result.stage_seconds)
    order = list(result.stage_seconds)
    assert order.index("denoise") < order.index("hires pass") < order.index("VAE decode")
    # 4 first-pass steps, then the last int(4 * 0.5) = 2 of a 4-step hires schedule: 6 in the readout, counted on.
    assert len(result.step_seconds) == 6
    assert [e.index for e in events] == [1, 2, 3, 4, 5, 6] and {e.total for e in events} == {6}
    assert result.kept_latents is not None and (result.kept_latents.width, result.kept_latents.height) == (size, size)
    params = parse_infotext(result.images[0].infotext)
    assert params["Size"] == f"{SIZES[family]}x{SIZES[family]}"  # A1111 writes the first pass's size
    assert params["Hires upscale"] == f"{SCALES[family]:g}" and params["Hires upscaler"] == "Latent"


def test_latent_lanczos_and_an_esrgan_file_all_run_and_are_recorded_as_a1111_writes_them(manager):
    results = {}
    for upscaler in ("Latent", "Lanczos", "Nearest", "tiny_x4"):
        result = manager.generate(hires_request(hires_upscaler=upscaler, hires_steps=6, hires_denoising=0.55))
        assert result.images[0].image.size == (128, 128)
        params = parse_infotext(result.images[0].infotext)
        assert params["Hires upscale"] == "2" and params["Hires upscaler"] == upscaler
        assert params["Hires steps"] == "6" and params["Denoising strength"] == "0.55"
        assert len(result.step_seconds) == 4 + int(6 * 0.55)
        results[upscaler] = pixels(result)
    assert not np.array_equal(results["Latent"], results["Lanczos"])
    assert not np.array_equal(results["Lanczos"], results["tiny_x4"])
    # Case-insensitive, as A1111 and the upscale module match names; the infotext keeps the file's own spelling.
    same = manager.generate(hires_request(hires_upscaler="TINY_X4", hires_steps=6, hires_denoising=0.55))
    assert parse_infotext(same.images[0].infotext)["Hires upscaler"] == "tiny_x4"
    assert np.array_equal(pixels(same), results["tiny_x4"])


def test_hires_steps_zero_means_steps_and_is_left_out_of_the_infotext(manager):
    result = manager.generate(hires_request(steps=3, hires_denoising=1.0))
    assert len(result.step_seconds) == 3 + 3
    assert "Hires steps" not in parse_infotext(result.images[0].infotext)


def test_strength_zero_is_the_upscaled_first_pass(manager):
    """No hires steps: the Latent upscaler's result is the first pass's latents resized, decoded at the new size."""
    result = manager.generate(hires_request(hires_denoising=0.0))
    assert len(result.step_seconds) == 4 and result.images[0].image.size == (128, 128)
    first = manager.generate(hires_request(hires_scale=1.0))
    kept = first.kept_latents.latents
    expected = upscale_latents(kept, 128, 128, 8)
    assert torch.allclose(result.kept_latents.latents, expected)


def test_the_latent_upscale_is_a1111s_bilinear_without_antialias():
    latents = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    up = upscale_latents(latents, 64, 64, 8)
    assert up.shape == (1, 1, 8, 8)
    assert torch.equal(up, torch.nn.functional.interpolate(latents, size=(8, 8), mode="bilinear", antialias=False))


def test_target_size_rounds_as_a1111_onto_the_family_multiple():
    assert hires_size(512, 768, 2.0, 8) == (1024, 1536)
    assert hires_size(512, 512, 1.3, 8) == (664, 664)  # int(665.6) = 665, latents 665 // 8 = 83: 664 px
    assert hires_size(832, 1216, 1.5, 16) == (1248, 1824)
    assert hires_size(256, 256, 1.25, 16) == (320, 320)


def test_every_batch_is_upscaled_and_each_seed_keeps_its_own_noise(manager):
    result = manager.generate(hires_request(batch_size=2, batch_count=2, seed=10))
    assert len(result.images) == 4 and {img.image.size for img in result.images} == {(128, 128)}
    assert len(result.step_seconds) == 2 * 6  # per batch (a batch of 2 steps together)
    single = manager.generate(hires_request(seed=result.images[2].seed))
    assert np.abs(pixels(result, 2) - pixels(single)).max() <= 2  # batched vs alone: float rounding only


def test_img2img_ignores_hires_with_a_note(manager):
    from PIL import Image

    result = manager.generate(hires_request(init_image=Image.new("RGB", (64, 64), (90, 120, 150)), denoising_strength=0.5))
    assert result.images[0].image.size == (64, 64) and "hires pass" not in result.stage_seconds
    assert any("Hires fix is a second pass of text-to-image" in w for w in result.warnings)


def test_with_a_lora_and_with_deepcache(manager):
    plain = manager.generate(hires_request(deepcache_interval=1))
    with_lora = manager.generate(hires_request(prompt="a portrait <lora:sd15-kohya:1>"))
    assert with_lora.images[0].image.size == (128, 128)
    assert "Lora hashes" in parse_infotext(with_lora.images[0].infotext)
    assert not np.array_equal(pixels(with_lora), pixels(plain))
    cached = manager.generate(hires_request(deepcache_interval=2, steps=6))
    assert cached.images[0].image.size == (128, 128) and cached.hook_stats["deepcache"]["cached_steps"] >= 1
    assert len(cached.step_seconds) == 6 + 3


def test_skip_inside_the_hires_pass_ends_that_batch_only(manager):
    cancel = CancelToken()
    notices: list[str] = []

    def listener(event):
        if isinstance(event, StepDone) and event.index == 5:  # the first hires step of batch 1
            cancel.skip()
        if isinstance(event, Notice):
            notices.append(event.text)

    result = manager.generate(hires_request(batch_count=2), listener=listener, cancel=cancel)
    assert len(result.images) == 1 and result.images[0].image.size == (128, 128)  # batch 2, whole
    assert result.images[0].seed == 5  # seed 4 was batch 1's
    assert any("Skipped batch 1 of 2" in text for text in notices)


def test_stop_inside_the_hires_pass_stops_the_run(manager):
    cancel = CancelToken()

    def listener(event):
        if isinstance(event, StepDone) and event.index == 5:
            cancel.cancel()

    with pytest.raises(GenerationCancelled):
        manager.generate(hires_request(batch_count=2), listener=listener, cancel=cancel)


@pytest.mark.parametrize("button", ["stop", "skip"])
def test_stop_and_skip_while_an_esrgan_net_upscales(manager, monkeypatch, button):
    """The net's tile callback sees the button: the pass ends before its denoise (Stop: the run; Skip: the batch)."""
    from pipelines.stages import hires

    cancel = CancelToken()
    events: list[StepDone] = []
    pressed = []

    def decode_then_press(*args, **kwargs):  # the first pass is decoded; the button lands while the net upscales
        decoded = decode_latents(*args, **kwargs)
        if not pressed:
            pressed.append(True)
            cancel.cancel() if button == "stop" else cancel.skip()
        return decoded

    decode_latents = hires.decode_latents
    monkeypatch.setattr(hires, "decode_latents", decode_then_press)
    request = hires_request(hires_upscaler="tiny_x4", batch_count=2)
    listener = lambda event: events.append(event) if isinstance(event, StepDone) else None  # noqa: E731
    if button == "stop":
        with pytest.raises(GenerationCancelled):
            manager.generate(request, listener=listener, cancel=cancel)
        assert [e.index for e in events] == [1, 2, 3, 4]  # no hires step ran
    else:
        result = manager.generate(request, listener=listener, cancel=cancel)
        assert [img.seed for img in result.images] == [5] and result.images[0].image.size == (128, 128)
        assert [e.index for e in events] == [1, 2, 3, 4, 7, 8, 9, 10, 11, 12]  # batch 1's hires steps never ran


@pytest.mark.parametrize("scale", [0.5, 4.5, float("nan"), "2"])
def test_a_scale_outside_1_to_4_is_refused(manager, scale):
    with pytest.raises(InvalidRequest, match="Hires scale must be between 1 and 4"):
        manager.generate(hires_request(hires_scale=scale))


def test_a_target_beyond_the_familys_size_is_refused_before_the_model_loads(make_manager, hires_models):
    fresh = make_manager(hires_models)
    with pytest.raises(InvalidRequest) as error:
        fresh.generate(hires_request(width=1024, height=768, hires_scale=2.5))
    message = str(error.value)
    assert "2560x1920" in message and "Stable Diffusion 1.5 supports up to 2048 px" in message and "at most 2" in message
    assert fresh.last_load("tiny-sd15") is None


def test_an_unknown_upscaler_lists_the_names(make_manager, hires_models):
    fresh = make_manager(hires_models)
    with pytest.raises(InvalidRequest) as error:
        fresh.generate(hires_request(hires_upscaler="4x-UltraSharp"))
    message = str(error.value)
    assert "4x-UltraSharp" in message and all(name in message for name in ("Latent", "Lanczos", "Nearest", "tiny_x4"))
    assert "broken_x2" not in message.split("Available:")[1].split("(")[0]  # an unusable file is not offered
    assert fresh.last_load("tiny-sd15") is None


def test_an_esrgan_file_that_does_not_match_the_architecture_is_named(make_manager, hires_models):
    fresh = make_manager(hires_models)
    with pytest.raises(InvalidRequest) as error:
        fresh.generate(hires_request(hires_upscaler="broken_x2"))
    message = str(error.value)
    assert "broken_x2.safetensors" in message and "body.1.rdb1.conv2.weight" in message
    assert fresh.last_load("tiny-sd15") is None


def test_experiment_axes_for_hires_scale_and_denoising(manager):
    from pipelines.experiments.axes import find_setting, parse_values
    from pipelines.experiments.plan import AxisSpec, Experiment, build_plan

    assert find_setting("Hires scale").field == "hires_scale" and find_setting("hires denoising").field == "hires_denoising"
    assert parse_values(find_setting("hires_scale"), "1-2 [3]") == [1.0, 1.5, 2.0]
    base = {"model": "tiny-sd15", "prompt": "a face", "width": 64, "height": 64, "steps": 2, "seed": 3, "sampler": "Euler"}
    plan = build_plan(Experiment(base, [AxisSpec("hires_scale", "1, 2"), AxisSpec("hires_denoising", "0.3, 0.6")]), manager)
    assert [(c.request.hires_scale, c.request.hires_denoising) for c in plan.cells] == [(1.0, 0.3), (2.0, 0.3), (1.0, 0.6), (2.0, 0.6)]
    assert plan.cells[1].label == "Hires scale: 2, Hires denoising: 0.3"
    with pytest.raises(InvalidRequest, match="Hires scale"):
        build_plan(Experiment(base, [AxisSpec("hires_scale", "1, 5")]), manager)
    with pytest.raises(InvalidRequest, match="supports up to 2048 px"):
        build_plan(Experiment(dict(base, width=1024, height=1024), [AxisSpec("hires_scale", "1, 3")]), manager)


def test_an_exact_repeat_reuses_the_first_pass_and_still_runs_the_hires_pass(make_manager, hires_models):
    cached = make_manager(hires_models, latent_cache_entries=8)
    first = cached.generate(hires_request())
    again = cached.generate(hires_request())
    assert again.cache_notes["latent cache"].startswith("hit") and "hires pass" in again.stage_seconds
    assert len(again.step_seconds) == 2  # only the hires steps ran
    assert np.array_equal(pixels(first), pixels(again))
    other = cached.generate(hires_request(hires_denoising=0.75))  # the cache holds the first pass: hires settings still apply
    assert other.cache_notes["latent cache"].startswith("hit") and not np.array_equal(pixels(other), pixels(first))


def test_the_hires_prompts_are_what_the_second_pass_reads(manager):
    """A1111's Hires prompt / Hires negative prompt: the first pass reads the prompts, the hires pass its own; both are
    in the PNG (A1111 writes them only when set), and Send to Generate brings them back or clears them."""
    from tests.tiny_models import expected_cfg_text, recorded_calls
    from ui.png_info_tab import generate_form_values

    request = tiny_request("sd15", prompt="a red cat", negative_prompt="ugly", steps=2, seed=3, hires_scale=1.5, hires_steps=2,
                           hires_denoising=1.0, hires_prompt="a blue dog, sharp", hires_negative_prompt="blurry")
    with recorded_calls(manager, request.model) as (pipe, calls):
        result = manager.generate(request)
    first, hires = (expected_cfg_text(pipe, "sd15", *texts)[0] for texts in (("a red cat", "ugly"), ("a blue dog, sharp", "blurry")))
    assert len(calls) == 4
    for index, expected in enumerate([first, first, hires, hires]):
        torch.testing.assert_close(calls[index]["text"], expected, msg=f"call {index}")
    params = parse_infotext(result.images[0].infotext)
    assert params["Hires prompt"] == "a blue dog, sharp" and params["Hires negative prompt"] == "blurry"
    sent, _notes = generate_form_values(result.images[0].infotext, manager, {})
    assert (sent["hires_prompt"], sent["hires_negative_prompt"]) == ("a blue dog, sharp", "blurry")
    plain = manager.generate(dataclasses.replace(request, hires_prompt="", hires_negative_prompt=""))
    assert "Hires prompt" not in parse_infotext(plain.images[0].infotext)
    assert generate_form_values(plain.images[0].infotext, manager, {})[0]["hires_prompt"] == ""


def test_the_a1111_api_maps_hr_prompt_and_a_bad_one_is_refused(manager):
    from ui.a1111.mapping import ApiDefaults, prepare
    from ui.a1111.models import Txt2ImgRequest

    def hires(**fields):
        body = Txt2ImgRequest(prompt="a cat", negative_prompt="ugly", steps=2, width=64, height=64, enable_hr=True, hr_scale=1.5, **fields)
        return prepare(body, manager, ApiDefaults("tiny-sd15"))

    own = hires(hr_prompt="a dog", hr_negative_prompt="blurry")
    assert (own.request.hires_prompt, own.request.hires_negative_prompt) == ("a dog", "blurry") and not own.warnings
    same = hires(hr_prompt="a cat", hr_negative_prompt="ugly")  # what A1111's clients send for "the same"
    assert (same.request.hires_prompt, same.request.hires_negative_prompt) == ("", "")
    with pytest.raises(InvalidRequest, match="The hires prompt must be text"):
        manager.generate(tiny_request("sd15", hires_scale=1.5, hires_prompt=3))


# -- A1111's Hires sampler and Hires schedule type ----------------------------------------------------


def checked(**fields):
    from pipelines.families import Family
    from pipelines.request import validate_request

    validated = validate_request(hires_request("sd15", **fields), Family.SD15)
    request = validated.request
    return (request.sampler, request.schedule_type, request.hires_sampler, request.hires_schedule_type), validated.warnings


@pytest.mark.parametrize("fields, expected", [
    ({"sampler": "DPM++ 2M"}, ("DPM++ 2M", "Karras", "", "")),
    ({"sampler": "DPM++ 2M", "hires_sampler": "Use same sampler", "hires_schedule_type": "Use same scheduler"}, ("DPM++ 2M", "Karras", "", "")),
    ({"sampler": "DPM++ 2M", "hires_sampler": "dpm++ 2m"}, ("DPM++ 2M", "Karras", "", "")),  # the same one named: as the first pass
    # another sampler on "Use same scheduler": the first pass's choice, Automatic = that sampler's own default
    ({"sampler": "DPM++ 2M", "hires_sampler": "DDIM"}, ("DPM++ 2M", "Karras", "DDIM", "Automatic")),
    ({"sampler": "DPM++ 2M", "hires_sampler": "Euler a"}, ("DPM++ 2M", "Karras", "Euler a", "Automatic")),
    ({"sampler": "DPM++ 2M", "schedule_type": "Karras", "hires_sampler": "Euler a"}, ("DPM++ 2M", "Karras", "Euler a", "")),  # Karras, as the first pass
    ({"sampler": "Euler", "hires_sampler": "DPM++ 2M"}, ("Euler", "Automatic", "DPM++ 2M", "Karras")),
    ({"sampler": "Euler", "hires_sampler": "DPM++ 2M SDE Karras"}, ("Euler", "Automatic", "DPM++ 2M SDE", "Karras")),
    ({"sampler": "DPM++ 2M", "hires_schedule_type": "Exponential"}, ("DPM++ 2M", "Karras", "", "Exponential")),
    ({"sampler": "Euler", "hires_schedule_type": "sgm_uniform"}, ("Euler", "Automatic", "", "SGM Uniform")),
    ({"sampler": "DPM++ 2M", "hires_sampler": "Flow Euler", "hires_scale": 1.0}, ("DPM++ 2M", "Karras", "", "")),  # off: not read
])
def test_the_hires_sampler_and_schedule_type_resolve_against_the_first_pass(fields, expected):
    assert checked(**fields) == (expected, ())


def test_a_hires_sampler_without_the_first_pass_schedule_runs_automatic_and_says_so():
    resolved, warnings = checked(sampler="DPM++ 2M", schedule_type="Karras", hires_sampler="DDIM")
    assert resolved == ("DPM++ 2M", "Karras", "DDIM", "Automatic")
    assert warnings == ("Hires fix: DDIM has no Karras schedule type; it runs Automatic.",)


@pytest.mark.parametrize("fields, message", [
    ({"hires_sampler": "Flow Euler"}, "Hires sampler 'Flow Euler' is not available for Stable Diffusion 1.5; choose \"Use same sampler\" or"),
    ({"hires_sampler": 3}, "Hires sampler 3 is not available"),
    ({"sampler": "DDIM", "hires_schedule_type": "Beta"}, "Hires schedule type Beta is not available with DDIM"),
    ({"hires_sampler": "LCM", "hires_schedule_type": "Karras"}, "Hires schedule type Karras is not available with LCM"),
    ({"hires_schedule_type": "Turbo"}, "Hires schedule type must be one of: Automatic, Uniform, Karras"),
])
def test_a_bad_hires_sampler_or_schedule_type_is_refused(fields, message):
    with pytest.raises(InvalidRequest, match=message):
        checked(**fields)


def test_the_hires_pass_runs_its_own_sampler_and_the_png_says_so(manager, monkeypatch):
    from pipelines.stages import hires

    made = []

    def spy(model, request):
        scheduler = real(model, request)
        made.append(None if scheduler is None else (type(scheduler).__name__, bool(getattr(scheduler.config, "use_karras_sigmas", False))))
        return scheduler

    real = hires.hires_scheduler
    monkeypatch.setattr(hires, "hires_scheduler", spy)
    same = manager.generate(hires_request(sampler="Euler"))
    own = manager.generate(hires_request(sampler="Euler", hires_sampler="DPM++ 2M"))
    assert made == [None, ("DPMSolverMultistepScheduler", True)]  # DPM++ 2M on Automatic: Karras
    params = parse_infotext(own.images[0].infotext)
    assert (params["Sampler"], params["Hires sampler"], params["Hires schedule type"]) == ("Euler", "DPM++ 2M", "Karras")
    assert "Hires sampler" not in parse_infotext(same.images[0].infotext)
    assert np.abs(pixels(own) - pixels(same)).max() > 2
    with manager.use("tiny-sd15") as model:
        assert type(model.pipe.scheduler).__name__ == "EulerDiscreteScheduler", "the loaded pipeline keeps the first pass's"


def test_the_png_and_the_a1111_api_bring_the_hires_sampler_back(manager):
    from ui.a1111.mapping import ApiDefaults, prepare
    from ui.a1111.models import Txt2ImgRequest
    from ui.png_info_tab import generate_form_values

    text = "a cat\nSteps: 4, Sampler: Euler, Schedule type: Automatic, Seed: 4, Size: 64x64, Hires upscale: 2, Hires upscaler: Latent"
    values, notes = generate_form_values(text + ", Hires sampler: DPM++ 2M, Hires schedule type: Exponential", manager, {})
    assert (values["hires_sampler"], values["hires_schedule_type"]) == ("DPM++ 2M", "Exponential") and not notes
    values, _ = generate_form_values(text + ", Hires sampler: DPM++ 2M Karras", manager, {})  # A1111's older combined name
    assert (values["hires_sampler"], values["hires_schedule_type"]) == ("DPM++ 2M", "Karras")
    values, _ = generate_form_values(text, manager, {})  # none written: the first pass's
    assert (values["hires_sampler"], values["hires_schedule_type"]) == ("Use same sampler", "Use same scheduler")

    def hires(**fields):
        body = Txt2ImgRequest(prompt="a cat", steps=2, width=64, height=64, sampler_name="Euler", enable_hr=True, hr_scale=1.5, **fields)
        return prepare(body, manager, ApiDefaults("tiny-sd15"))

    own = hires(hr_sampler_name="DPM++ 2M", hr_scheduler="exponential")
    assert (own.request.hires_sampler, own.request.hires_schedule_type) == ("DPM++ 2M", "Exponential") and not own.warnings
    same = hires(hr_sampler_name="Use same sampler", hr_scheduler="Use same scheduler")
    assert (same.request.hires_sampler, same.request.hires_schedule_type) == ("", "") and not same.warnings
    fallback = hires(hr_sampler_name="DDIM", hr_scheduler="Karras")
    assert (fallback.request.hires_sampler, fallback.request.hires_schedule_type) == ("DDIM", "Automatic")
    assert fallback.warnings == ["Hires fix: Schedule type Karras is not available with DDIM in Likeness; Automatic was used."]
    with pytest.raises(InvalidRequest, match="Hires fix \\(hr_sampler_name / hr_scheduler\\): Sampler 'DPM fast' not found"):
        hires(hr_sampler_name="DPM fast")
