"""A1111's Hires checkpoint: the hires pass (and the decode, the detailer) on another model of the family, each model
loaded once a run, the readout counting on, A1111's infotext key, and what is refused before anything loads."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.errors import GenerationCancelled, InvalidRequest
from pipelines.generate import CancelToken
from pipelines.infotext import parse_infotext
from pipelines.telemetry import StageEnded, StepDone
from tests.tiny_models import build_tiny_sd15, copy_model, save_tiny_pipeline, tiny_request


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, model_zoo, tiny_pipes):
    """tiny-sd15 and another SD 1.5 model with other weights (its own seed), an SDXL one, and a LoRA of the SD 1.5
    architecture."""
    from tests.lora.make_loras import write_lora

    models = tmp_path_factory.mktemp("hires-checkpoint-models")
    copy_model(model_zoo["sd15"], models, "tiny-sd15")
    save_tiny_pipeline(build_tiny_sd15(seed=77), models / "other-sd15")
    copy_model(model_zoo["sdxl"], models, "tiny-sdxl")
    write_lora(models / "Lora", "sd15-kohya", tiny_pipes["sd15"], "sd15", "kohya", seed=1)
    return models


@pytest.fixture()
def manager(make_manager, two_models):
    return make_manager(two_models, latent_cache_entries=0)


def request(**fields):
    values = dict(seed=4, steps=4, hires_scale=2.0, hires_denoising=0.5, save=False)
    return tiny_request("sd15", **(values | fields))


def test_the_hires_pass_runs_on_the_other_model_each_loaded_once(manager):
    events = []
    other = manager.generate(request(batch_count=2, hires_checkpoint="other-sd15"), listener=events.append)
    same = manager.generate(request(batch_count=2))
    assert [img.seed for img in other.images] == [4, 5] and other.images[0].image.size == (128, 128)
    for a, b in zip(same.images, other.images):  # the second pass (and the decode) are the other weights'
        assert not np.array_equal(np.asarray(a.image), np.asarray(b.image))
    # Both batches' first passes, then both hires passes: 2 x 4, then 2 x 2 steps, counted on to 12.
    steps = [e.index for e in events if isinstance(e, StepDone)]
    assert steps == list(range(1, 13)) and {e.total for e in events if isinstance(e, StepDone)} == {12}
    assert [e.stage for e in events if isinstance(e, StageEnded)].count("model load") == 2  # one per model, not per batch
    params = parse_infotext(other.images[1].infotext)
    # A folder has no A1111 hash (no "Model hash" either): the name alone; a single file adds " [hash]".
    assert params["Model"] == "tiny-sd15" and params["Hires checkpoint"] == "other-sd15"
    assert {"denoise", "hires pass", "VAE decode"} <= set(parse_stage_names(params["Stage times"]))
    assert "Hires checkpoint" not in parse_infotext(same.images[0].infotext)
    assert other.kept_latents.model == "other-sd15"  # Re-decode uses the VAE that decoded them
    # "Use same checkpoint" and the first model's own name are the one-model run, byte for byte.
    for name in ("Use same checkpoint", "tiny-sd15"):
        again = manager.generate(request(batch_count=2, hires_checkpoint=name))
        assert np.array_equal(np.asarray(again.images[1].image), np.asarray(same.images[1].image))
        assert "Hires checkpoint" not in parse_infotext(again.images[1].infotext)


def parse_stage_names(text: str) -> list[str]:
    return [part.rsplit(" ", 1)[0] for part in text.split(", ")]


def test_an_image_upscaler_decodes_the_first_pass_on_the_first_model(manager):
    events = []
    result = manager.generate(request(hires_checkpoint="other-sd15", hires_upscaler="Lanczos"), listener=events.append)
    ends = {e.stage: e.detail for e in events if isinstance(e, StageEnded)}
    assert ends["first-pass decode"] == "for the Lanczos upscaler, on tiny-sd15's VAE"
    assert ends["hires pass"].startswith("on other-sd15, 2x Lanczos, 64x64 -> 128x128 px")
    assert result.images[0].image.size == (128, 128)


def test_skip_during_a_first_pass_drops_that_batch_and_stop_ends_the_run(manager):
    cancel = CancelToken()

    def skip_first(event):
        if isinstance(event, StepDone) and event.index == 2:
            cancel.skip()

    result = manager.generate(request(batch_count=2, hires_checkpoint="other-sd15"), listener=skip_first, cancel=cancel)
    assert [img.seed for img in result.images] == [5]
    stop = CancelToken()

    def stop_in_second(event):
        if isinstance(event, StepDone) and event.index == 9:  # the first hires step
            stop.cancel()

    with pytest.raises(GenerationCancelled):
        manager.generate(request(batch_count=2, hires_checkpoint="other-sd15"), listener=stop_in_second, cancel=stop)


def test_refused_before_anything_loads(manager):
    with pytest.raises(InvalidRequest, match=r"The hires checkpoint 'nope' is not installed; Stable Diffusion 1.5 models here: .*other-sd15"):
        manager.generate(request(hires_checkpoint="nope"))
    with pytest.raises(InvalidRequest, match=r"'tiny-sdxl' is Stable Diffusion XL, the first pass's model 'tiny-sd15' Stable Diffusion 1.5: "
                                             r"the hires pass goes on from the first pass's latents"):
        manager.generate(request(hires_checkpoint="tiny-sdxl"))
    with pytest.raises(InvalidRequest, match="The hires checkpoint must be a model's name"):
        manager.generate(request(hires_checkpoint=["other-sd15"]))
    assert manager.last_load("tiny-sd15") is None and manager.last_load("other-sd15") is None
    # Hires fix off: the checkpoint is not read (as A1111), even an unknown one.
    plain = manager.generate(request(hires_scale=1.0, hires_checkpoint="nope"))
    assert "Hires checkpoint" not in parse_infotext(plain.images[0].infotext)


def test_the_loras_and_deepcache_apply_on_both_models_and_leave_neither(manager):
    """Each model takes the prompt's LoRA and its own DeepCache hook for its part; after the run both are as loaded."""
    from tests.lora.test_lora_generation import same_snapshot, snapshot

    with manager.use("tiny-sd15") as first, manager.use("other-sd15") as second:
        before = snapshot(first.pipe, "sd15"), snapshot(second.pipe, "sd15")
    plain = manager.generate(request(hires_checkpoint="other-sd15", deepcache_interval=2))
    lora = manager.generate(request(hires_checkpoint="other-sd15", deepcache_interval=2, prompt="a lighthouse <lora:sd15-kohya:1>"))
    with manager.use("tiny-sd15") as first, manager.use("other-sd15") as second:
        assert same_snapshot(before[0], snapshot(first.pipe, "sd15")) and same_snapshot(before[1], snapshot(second.pipe, "sd15"))
    assert not np.array_equal(np.asarray(plain.images[0].image), np.asarray(lora.images[0].image))
    params = parse_infotext(lora.images[0].infotext)
    assert params["DeepCache"].startswith("N=2") and "sd15-kohya" in params["Lora hashes"]
    # The second model runs its hires pass with the prompt's LoRA: a hires prompt without the tag (the same first
    # pass, a hires pass without the LoRA) draws another picture.
    tagged = request(hires_checkpoint="other-sd15", prompt="a lighthouse <lora:sd15-kohya:1>")
    untagged_hires = manager.generate(dataclasses.replace(tagged, hires_prompt="a lighthouse"))
    assert not np.array_equal(np.asarray(manager.generate(tagged).images[0].image), np.asarray(untagged_hires.images[0].image))


def test_pulid_keeps_the_identity_on_the_second_model(tmp_path, make_manager, model_zoo, tiny_pipes):
    """SDXL with a face reference: the identity is embedded once (the second model's face stage is a memo hit) and the
    second model's PuLID hook injects it in its hires pass; the PNG records both."""
    from pipelines.bench.tiny_face import HANKS, TINY_IDFORMER, write_face_models
    from pipelines.face.options import FaceOptions

    models = tmp_path / "models"
    copy_model(model_zoo["sdxl"], models, "tiny-sdxl")
    copy_model(model_zoo["sdxl"], models, "other-sdxl")
    write_face_models(models, sdxl_unet=tiny_pipes["sdxl"].unet)
    manager = make_manager(models, latent_cache_entries=0)
    manager.face.idformer_config = TINY_IDFORMER
    events = []
    result = manager.generate(tiny_request("sdxl", seed=3, steps=4, hires_scale=1.25, hires_denoising=0.5, hires_checkpoint="other-sdxl",
                                           save=False), listener=events.append, face=FaceOptions(photos=(str(HANKS),), id_weight=0.8))
    embeds = [e.detail for e in events if isinstance(e, StageEnded) and e.stage == "face embed"]
    assert len(embeds) == 2 and embeds[0].startswith("computed") and embeds[1] == "memoized"
    assert result.hook_stats["pulid"]["processors"] > 0 and result.hook_stats["pulid"]["steps_with_id"] >= 1  # the second model's
    params = parse_infotext(result.images[0].infotext)
    assert params["PuLID weight"] == "0.8" and params["Hires checkpoint"] == "other-sdxl" and params["Model"] == "tiny-sdxl"
