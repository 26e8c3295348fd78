"""The tiny test models themselves: real diffusers pipelines of each family, seeded, offline round trip."""
from __future__ import annotations

import torch
from diffusers import FluxPipeline, StableDiffusionXLPipeline
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

from pipelines.catalog import family_of_diffusers_folder
from pipelines.families import Family
from tests.tiny_models import FLUX_TRANSFORMER, build_t5_tokenizer, build_tiny_flux, build_tiny_sdxl


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_saved_folders_are_recognised_by_family(model_zoo):
    for family, folder in model_zoo.items():
        assert family_of_diffusers_folder(folder) == (Family(family), None)


def test_builders_are_seeded(tiny_pipes):
    again = build_tiny_flux()
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        assert same_weights(getattr(again, name), getattr(tiny_pipes["flux"], name)), name
    other = build_tiny_sdxl(seed=5)
    assert not same_weights(other.unet, tiny_pipes["sdxl"].unet)


def test_sdxl_architecture(tiny_pipes):
    pipe = tiny_pipes["sdxl"]
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert type(pipe.text_encoder) is CLIPTextModel and isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"
    assert pipe.vae_scale_factor == 8


def test_flux_architecture_and_offline_round_trip(tiny_pipes, model_zoo):
    pipe = tiny_pipes["flux"]
    assert pipe.transformer.config.in_channels == 64 == 4 * pipe.vae.config.latent_channels
    assert pipe.transformer.config.guidance_embeds is True
    assert tuple(pipe.transformer.config.axes_dims_rope) == FLUX_TRANSFORMER["axes_dims_rope"]
    assert pipe.vae.config.shift_factor and pipe.vae.config.scaling_factor != 1
    loaded = FluxPipeline.from_pretrained(str(model_zoo["flux"]), local_files_only=True)
    assert isinstance(loaded.text_encoder_2, T5EncoderModel)
    assert same_weights(loaded.transformer, pipe.transformer)
    text = "a portrait photo of an old man"
    assert loaded.tokenizer_2(text).input_ids == pipe.tokenizer_2(text).input_ids


def test_t5_tokenizer_is_usable():
    tokenizer = build_t5_tokenizer()
    ids = tokenizer("a red cat", padding="max_length", max_length=16, truncation=True).input_ids
    assert len(ids) == 16
    assert ids[3] == tokenizer.eos_token_id and ids[-1] == tokenizer.pad_token_id
    assert tokenizer.unk_token_id not in ids[:3], "known words are whole pieces"
    assert max(tokenizer("zzz qqq").input_ids) < len(tokenizer)
