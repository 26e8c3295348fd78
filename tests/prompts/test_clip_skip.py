"""A1111's Clip skip (CLIP_stop_at_last_layers) on SD 1.5: the encoding, the request's check, the caches' keys and
the infotext, on the tiny SD 1.5 and SDXL pipelines (seeded random weights) through the real manager."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pipelines.errors import InvalidRequest
from pipelines.experiments.axes import find_setting
from pipelines.families import Family
from pipelines.infotext import parse_infotext
from pipelines.prompts.encode import encode_weighted
from pipelines.request import GenerationRequest, validate_request
from tests.tiny_models import copy_model

CPU = torch.device("cpu")


def reference_clip_skip(pipe, prompt: str, skip: int) -> torch.Tensor:
    """A1111's sd_hijack_clip, written out with transformers alone: the Nth hidden state from the end, then the
    text model's final layer norm."""
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    encoder = pipe.text_encoder
    with torch.no_grad():
        states = encoder(ids, output_hidden_states=True).hidden_states
        return getattr(encoder, "text_model", encoder).final_layer_norm(states[-skip])


def test_clip_skip_reads_the_layer_a1111_reads(sd15):
    plain = encode_weighted(sd15, "a red cat", "", CPU, 1, False, sdxl=False)["prompt_embeds"]
    skip1 = encode_weighted(sd15, "a red cat", "", CPU, 1, False, sdxl=False, clip_skip=1)["prompt_embeds"]
    skip2 = encode_weighted(sd15, "a red cat", "", CPU, 1, False, sdxl=False, clip_skip=2)["prompt_embeds"]
    assert torch.equal(plain, skip1)
    torch.testing.assert_close(skip2, reference_clip_skip(sd15, "a red cat", 2))
    assert not torch.allclose(skip1, skip2), "clip skip 2 must change the conditioning"
    # Past the encoder's layers: its first layer, not an index error.
    layers = sd15.text_encoder.config.num_hidden_layers
    far = encode_weighted(sd15, "a red cat", "", CPU, 1, False, sdxl=False, clip_skip=layers + 3)["prompt_embeds"]
    torch.testing.assert_close(far, reference_clip_skip(sd15, "a red cat", layers))


def test_sdxl_encoding_ignores_clip_skip(sdxl):
    skip1 = encode_weighted(sdxl, "a red cat", "", CPU, 1, False, sdxl=True)["prompt_embeds"]
    skip2 = encode_weighted(sdxl, "a red cat", "", CPU, 1, False, sdxl=True, clip_skip=2)["prompt_embeds"]
    assert torch.equal(skip1, skip2)


@pytest.mark.parametrize(("value", "message"), [(0, "Clip skip must be between 1 and 12, got 0."),
                                                (13, "Clip skip must be between 1 and 12, got 13."),
                                                ("2", "Clip skip must be a whole number, got '2'."),
                                                (2.5, "Clip skip must be a whole number, got 2.5.")])
def test_a_clip_skip_out_of_range_is_refused_with_its_name(value, message):
    with pytest.raises(InvalidRequest, match=message):
        validate_request(GenerationRequest(model="m", prompt="x", clip_skip=value), Family.SD15)


def test_sdxl_and_flux_run_without_clip_skip_and_say_so():
    for family in (Family.SDXL, Family.FLUX):
        checked = validate_request(GenerationRequest(model="m", prompt="x", width=1024, height=1024, sampler=family.spec.default_sampler,
                                                     clip_skip=2), family)
        assert checked.request.clip_skip == 1
        assert any("Clip skip 2 applies to SD 1.5 models only" in w for w in checked.warnings), checked.warnings


def test_clip_skip_is_an_experiment_axis():
    assert find_setting("Clip skip").field == "clip_skip" and find_setting("clip_skip").kind == "int"


def test_a_generation_with_clip_skip_records_it_and_never_reuses_other_runs(tmp_path, model_zoo, make_manager):
    import numpy as np

    copy_model(model_zoo["sd15"], tmp_path / "models", "tiny-sd15")
    manager = make_manager(tmp_path / "models")
    base = GenerationRequest(model="tiny-sd15", prompt="a red cat", steps=2, width=64, height=64, seed=3, sampler="Euler", save=False)
    first = manager.generate(base, telemetry=False)
    assert "Clip skip" not in parse_infotext(first.images[0].infotext)  # 1: left out, as A1111 writes it
    skipped = manager.generate(dataclasses.replace(base, clip_skip=2), telemetry=False)
    assert parse_infotext(skipped.images[0].infotext)["Clip skip"] == "2"
    # Neither the prompt memo nor the exact-repeat latent cache hands clip skip 2 the clip skip 1 run's work.
    assert skipped.cache_notes == {"prompt memo": "miss", "latent cache": "miss"}, skipped.cache_notes
    assert not np.array_equal(np.asarray(first.images[0].image), np.asarray(skipped.images[0].image))
    again = manager.generate(dataclasses.replace(base, clip_skip=2), telemetry=False)
    assert again.cache_notes.get("prompt memo") == "hit" and again.cache_notes.get("latent cache", "").startswith("hit"), again.cache_notes
    assert np.array_equal(np.asarray(again.images[0].image), np.asarray(skipped.images[0].image))
