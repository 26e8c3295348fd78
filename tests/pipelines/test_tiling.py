"""A1111's Tiling: the UNet's and the VAE's convolutions wrap around for one generation, so the picture repeats
seamlessly; on the tiny SD 1.5 / SDXL pipelines (seeded random weights) and through the real manager."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipelines.errors import InvalidRequest
from pipelines.experiments.axes import find_setting
from pipelines.hooks.base import HookContext, attached
from pipelines.hooks.tiling import TilingHook, tiled_convolutions
from pipelines.infotext import parse_infotext
from tests.tiny_models import tiny_request


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


def decoded(pipe, latents: torch.Tensor) -> torch.Tensor:
    """The tiny SD 1.5 pipeline from these exact starting latents, 3 Euler steps, decoded (no CFG: one prompt)."""
    from diffusers import EulerDiscreteScheduler

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        out = pipe("a red cat", num_inference_steps=3, guidance_scale=1.0, latents=latents.clone(), output_type="latent").images
        return pipe.vae.decode(out / pipe.vae.config.scaling_factor).sample


def test_wrapped_convolutions_make_the_picture_repeat(tiny_pipes):
    """What seamless means: with every convolution wrapping around, the UNet and the VAE treat the picture as a torus,
    so starting noise moved round by a quarter of the picture gives the same picture moved round the same way (the
    UNet halves the size twice: a move of 4 latent pixels, 32 image pixels). With zero padding the edges differ."""
    pipe = tiny_pipes["sd15"]
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    moved = torch.roll(noise, shifts=4, dims=3)
    context = HookContext(total_steps=3, height=64, width=64, batch_size=1)
    with attached(pipe, [TilingHook()], context):
        tiled, tiled_moved = decoded(pipe, noise), decoded(pipe, moved)
    assert context.stats["tiling"]["convolutions"] == len(tiled_convolutions(pipe)) > 20
    torch.testing.assert_close(tiled_moved, torch.roll(tiled, shifts=32, dims=3), atol=2e-4, rtol=0)
    plain, plain_moved = decoded(pipe, noise), decoded(pipe, moved)
    assert (plain_moved - torch.roll(plain, shifts=32, dims=3)).abs().max() > 1e-2, "zero padding sees the edges"
    assert all(conv.padding_mode == "zeros" for conv in tiled_convolutions(pipe)), "detach put every mode back"


def test_a_generation_with_tiling_wraps_every_convolution_only_while_it_runs(shared_manager):
    request = tiny_request("sd15", seed=7, save=False, tiling=True)
    modes = []
    with shared_manager.use(request.model) as model:
        convs = tiled_convolutions(model.pipe)
        unet_conv, vae_conv = model.pipe.unet.conv_in, model.pipe.vae.decoder.conv_in
    handles = [conv.register_forward_pre_hook(lambda module, _args: modes.append(module.padding_mode)) for conv in (unet_conv, vae_conv)]
    try:
        tiled = shared_manager.generate(request)
    finally:
        for handle in handles:
            handle.remove()
    assert modes and set(modes) == {"circular"}, "the UNet's and the VAE's convolutions wrapped during the run"
    assert all(conv.padding_mode == "zeros" for conv in convs), "and not after it"
    plain = shared_manager.generate(dataclasses.replace(request, tiling=False))
    assert not np.array_equal(pixels(tiled), pixels(plain))
    assert parse_infotext(tiled.images[0].infotext)["Tiling"] == "True"
    assert "Tiling" not in parse_infotext(plain.images[0].infotext)


def test_sdxl_tiles_too(shared_manager):
    request = tiny_request("sdxl", seed=7, save=False)
    assert not np.array_equal(pixels(shared_manager.generate(dataclasses.replace(request, tiling=True))),
                              pixels(shared_manager.generate(request)))


def test_the_exact_repeat_cache_tells_tiled_from_plain(make_manager, shared_models_dir):
    manager = make_manager(shared_models_dir, latent_cache_entries=8)
    request = tiny_request("sd15", seed=9, save=False)
    manager.generate(request)
    tiled = manager.generate(dataclasses.replace(request, tiling=True))
    assert tiled.cache_notes["latent cache"] == "miss"
    assert manager.generate(dataclasses.replace(request, tiling=True)).cache_notes["latent cache"].startswith("hit")


@pytest.mark.parametrize(("family", "value", "message"), [
    ("flux", True, "Tiling works on SD 1.5 and SDXL"),
    ("sd15", "yes", "Tiling must be true or false, got 'yes'."),
    ("sd15", 1, "Tiling must be true or false, got 1."),
])
def test_tiling_that_cannot_run_is_refused_with_its_name(shared_manager, family, value, message):
    with pytest.raises(InvalidRequest, match=message):
        shared_manager.generate(tiny_request(family, tiling=value, save=False))


def test_tiling_is_an_experiment_axis_and_an_a1111_api_field(make_manager, shared_models_dir):
    from ui.a1111.mapping import ApiDefaults, prepare
    from ui.a1111.models import Txt2ImgRequest

    assert find_setting("Tiling").field == "tiling" and find_setting("tiling").kind == "bool"
    manager = make_manager(shared_models_dir)
    for sent, expected in ((True, True), (False, False), (None, False)):
        prepared = prepare(Txt2ImgRequest(prompt="x", tiling=sent, steps=2, width=64, height=64), manager, ApiDefaults("tiny-sd15"))
        assert prepared.request.tiling is expected and not any("tiling" in w.lower() for w in prepared.warnings), prepared.warnings


def test_png_info_sends_tiling_back_and_clears_it_when_absent():
    from ui.png_info_tab import generate_form_values

    with_tiling = "a wall\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Tiling: True"
    assert generate_form_values(with_tiling, None, {})[0]["tiling"] is True
    assert generate_form_values(with_tiling.replace(", Tiling: True", ""), None, {})[0]["tiling"] is False
