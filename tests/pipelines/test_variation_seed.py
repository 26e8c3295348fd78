"""A1111's variation seed (subseed, subseed strength) on the tiny SD 1.5 pipeline through the real manager: the
noise it starts from, the seeds of a batch, the infotext, the exact-repeat key, and where it does not apply."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipelines.errors import InvalidRequest
from pipelines.families import Family
from pipelines.infotext import parse_infotext
from pipelines.request import GenerationRequest, validate_request
from pipelines.stages.denoise import slerp
from tests.tiny_models import copy_model, tiny_request


def pixels(result, index: int = 0) -> np.ndarray:
    return np.asarray(result.images[index].image, dtype=np.int16)


@pytest.fixture
def manager(tmp_path, model_zoo, make_manager):
    copy_model(model_zoo["sd15"], tmp_path / "models", "tiny-sd15")
    return make_manager(tmp_path / "models")


def test_slerp_ends_at_both_noises_and_keeps_their_spread():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 4, 16, 16, generator=generator), torch.randn(1, 4, 16, 16, generator=generator)
    torch.testing.assert_close(slerp(0.0, a, b), a)
    torch.testing.assert_close(slerp(1.0, a, b), b)
    half = slerp(0.5, a, b)
    assert abs(half.std().item() - a.std().item()) < 0.05  # a straight mix would shrink it to about 0.71
    assert (0.5 * a + 0.5 * b).std().item() < 0.8


def test_strength_0_is_the_seed_and_strength_1_is_the_variation_seeds_noise(manager):
    base = tiny_request("sd15", seed=11, steps=3, sampler="Euler", save=False)
    plain = manager.generate(base, telemetry=False)
    assert np.array_equal(pixels(plain), pixels(manager.generate(dataclasses.replace(base, subseed=22, subseed_strength=0.0), telemetry=False)))
    other_seed = manager.generate(dataclasses.replace(base, seed=22), telemetry=False)
    full = manager.generate(dataclasses.replace(base, subseed=22, subseed_strength=1.0), telemetry=False)
    assert np.abs(pixels(full) - pixels(other_seed)).max() <= 1  # Euler: the noise alone decides
    half = manager.generate(dataclasses.replace(base, subseed=22, subseed_strength=0.3), telemetry=False)
    assert np.abs(pixels(half) - pixels(plain)).max() > 1 and np.abs(pixels(half) - pixels(other_seed)).max() > 1
    params = parse_infotext(half.images[0].infotext)
    assert params["Variation seed"] == "22" and params["Variation seed strength"] == "0.3"
    assert "Variation seed" not in parse_infotext(plain.images[0].infotext)


def test_an_ancestral_sampler_keeps_its_step_noise_from_the_seed(manager):
    """The seed's generator draws the starting noise as diffusers would, then goes on to Euler a's step noise."""
    base = tiny_request("sd15", seed=11, steps=3, sampler="Euler a", save=False)
    plain = manager.generate(base, telemetry=False)
    same = manager.generate(dataclasses.replace(base, subseed=11, subseed_strength=1.0), telemetry=False)
    assert np.abs(pixels(plain) - pixels(same)).max() <= 1


def test_a_batch_takes_consecutive_variation_seeds_and_the_repeat_key_tells_them_apart(manager):
    base = tiny_request("sd15", seed=100, steps=2, sampler="Euler", subseed=500, subseed_strength=0.5, batch_size=2, save=False)
    batch = manager.generate(base, telemetry=False)
    assert [parse_infotext(i.infotext)["Variation seed"] for i in batch.images] == ["500", "501"]
    second = manager.generate(dataclasses.replace(base, seed=101, subseed=501, batch_size=1), telemetry=False)
    assert np.abs(pixels(second) - pixels(batch, 1)).max() <= 1
    # Seed 101 with variation seed 500 is another picture, never the cached one above.
    other = manager.generate(dataclasses.replace(base, seed=101, subseed=500, batch_size=1), telemetry=False)
    assert "latent cache" not in other.cache_notes or other.cache_notes["latent cache"] == "miss"
    assert np.abs(pixels(other) - pixels(second)).max() > 1


def test_random_variation_seed_bad_values_and_where_it_does_not_apply(manager):
    random_one = manager.generate(tiny_request("sd15", steps=2, subseed_strength=0.2, save=False), telemetry=False)
    assert 0 <= int(parse_infotext(random_one.images[0].infotext)["Variation seed"]) < 2**32
    for fields, message in (({"subseed_strength": 1.5}, "Variation seed strength must be between 0 and 1, got 1.5."),
                            ({"subseed_strength": float("nan")}, "Variation seed strength must be between 0 and 1"),
                            ({"subseed": -2, "subseed_strength": 0.5}, r"Variation seed must be -1 \(random\) or between 0 and 4294967295, got -2.")):
        with pytest.raises(InvalidRequest, match=message):
            validate_request(GenerationRequest(model="m", prompt="x", **fields), Family.SD15)
    flux = validate_request(GenerationRequest(model="m", prompt="x", width=1024, height=1024, sampler="Flow Euler", subseed=3,
                                              subseed_strength=0.5), Family.FLUX)
    assert flux.request.subseed_strength == 0.5 and not flux.warnings  # FLUX.1 too, since 2026-12-05


def test_send_to_generate_sets_the_variation_seed_and_turns_it_off_without_one(manager):
    from ui.png_info_tab import generate_form_values, unapplied_keys

    text = "a cat\nSteps: 20, Seed: 1, Size: 64x64, Variation seed: 22, Variation seed strength: 0.3"
    values, notes = generate_form_values(text, manager, {})
    assert values["subseed"] == 22 and values["subseed_strength"] == 0.3 and not notes
    assert unapplied_keys(text, ("prompt", "steps", "seed", "width", "height", "subseed", "subseed_strength"))[0] == []
    values, _ = generate_form_values("a cat\nSteps: 20, Seed: 1, Size: 64x64", manager, {})
    assert values["subseed_strength"] == 0.0 and "subseed" not in values
