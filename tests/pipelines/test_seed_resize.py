"""A1111's "Resize seed from": the seed's noise drawn at another size and centred in the picture's, so a composition
found at one size is kept at another. The placement against A1111's rule written out, the noise a run starts from,
the request's checks, the PNG key, the A1111 API and the CLI."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipelines.errors import InvalidRequest
from pipelines.families import Family
from pipelines.infotext import parse_infotext
from pipelines.request import validate_request
from pipelines.stages.denoise import centre_placed, start_noise
from tests.tiny_models import tiny_request


def a1111_placed(noise: np.ndarray, full: np.ndarray) -> np.ndarray:
    """modules/processing.py create_random_tensors' placement, element by element (C, h, w)."""
    out = full.copy()
    dx = (full.shape[2] - noise.shape[2]) // 2
    dy = (full.shape[1] - noise.shape[1]) // 2
    w = noise.shape[2] if dx >= 0 else noise.shape[2] + 2 * dx
    h = noise.shape[1] if dy >= 0 else noise.shape[1] + 2 * dy
    tx, ty = (0 if dx < 0 else dx), (0 if dy < 0 else dy)
    dx, dy = max(-dx, 0), max(-dy, 0)
    for c in range(full.shape[0]):
        for y in range(h):
            for x in range(w):
                out[c, ty + y, tx + x] = noise[c, dy + y, dx + x]
    return out


@pytest.mark.parametrize("small, full", [((8, 8), (8, 10)), ((8, 8), (11, 13)), ((12, 9), (8, 8)), ((6, 12), (10, 8)), ((5, 5), (5, 5))])
def test_the_seed_noise_is_centred_as_a1111_places_it(small, full):
    generator = torch.Generator().manual_seed(3)
    noise, background = torch.randn((1, 4, *small), generator=generator), torch.randn((1, 4, *full), generator=generator)
    placed = centre_placed(noise, background)
    np.testing.assert_array_equal(placed[0].numpy(), a1111_placed(noise[0].numpy(), background[0].numpy()))


def fake_plan(width: int, height: int, resize: tuple[int, int], strength: float = 0.0):
    pipe = SimpleNamespace(vae_scale_factor=8, vae=SimpleNamespace(config=SimpleNamespace(latent_channels=4)))
    request = SimpleNamespace(seed_resize_from_w=resize[0], seed_resize_from_h=resize[1], subseed_strength=strength)
    plan = SimpleNamespace(model=SimpleNamespace(pipe=pipe, device=torch.device("cpu"), family=Family.SD15), request=request)
    state = SimpleNamespace(height=height, width=width, seeds=[11, 12], subseeds=[21, 22],
                            embeds={"prompt_embeds": torch.zeros(1, dtype=torch.float32)})
    return plan, state


def noise_of(width: int, height: int, resize=(0, 0), strength: float = 0.0) -> torch.Tensor:
    plan, state = fake_plan(width, height, resize, strength)
    return start_noise(plan, state, [torch.Generator().manual_seed(seed) for seed in state.seeds])


def test_a_seed_keeps_its_noise_in_the_middle_of_a_wider_picture():
    first = noise_of(64, 64)  # the seeds' own noise at 64x64 (8x8 latents)
    wider = noise_of(96, 64, resize=(64, 64))  # 12x8 latents: the 8x8 noise in columns 2..9
    assert wider.shape == (2, 4, 8, 12)
    assert torch.equal(wider[..., 2:10], first)
    around = noise_of(96, 64)  # what shows around it: each seed's noise at the picture's size
    assert torch.equal(wider[..., :2], around[..., :2]) and torch.equal(wider[..., 10:], around[..., 10:])
    # a smaller picture: the middle of the seed's noise at the larger size
    assert torch.equal(noise_of(48, 64, resize=(64, 64)), first[..., 1:7])


def test_with_a_variation_seed_both_noises_are_drawn_at_the_resize_size():
    varied = noise_of(64, 64, strength=0.3)
    assert torch.equal(noise_of(96, 64, resize=(64, 64), strength=0.3)[..., 2:10], varied)


def test_the_run_starts_from_it_writes_it_and_keys_the_repeat_cache_on_it(shared_manager):
    base = tiny_request("sd15", seed=9, steps=2, width=96, height=64, sampler="Euler", save=False)
    plain = shared_manager.generate(base).images[0]
    resized = shared_manager.generate(dataclasses.replace(base, seed_resize_from_w=64, seed_resize_from_h=64)).images[0]
    other = shared_manager.generate(dataclasses.replace(base, seed_resize_from_w=64, seed_resize_from_h=96)).images[0]
    assert parse_infotext(resized.infotext)["Seed resize from"] == "64x64"
    assert "Seed resize from" not in parse_infotext(plain.infotext)
    pixels = [np.asarray(image.image, dtype=np.int16) for image in (plain, resized, other)]
    assert np.abs(pixels[1] - pixels[0]).max() > 2 and np.abs(pixels[2] - pixels[1]).max() > 2, "served from another run's cache?"


@pytest.mark.parametrize("fields, expected, note", [
    ({"seed_resize_from_w": 64, "seed_resize_from_h": 64}, (64, 64), None),
    ({"seed_resize_from_w": 64, "seed_resize_from_h": 0}, (0, 0), None),  # both, or off (A1111)
    ({"seed_resize_from_w": -1, "seed_resize_from_h": -1}, (0, 0), None),  # A1111's API default
    ({"seed_resize_from_w": 96, "seed_resize_from_h": 64}, (0, 0), None),  # the picture's own size: nothing to move
])
def test_when_it_is_on(fields, expected, note):
    validated = validate_request(tiny_request("sd15", width=96, height=64, **fields), Family.SD15)
    assert (validated.request.seed_resize_from_w, validated.request.seed_resize_from_h) == expected and not validated.warnings


def test_flux_and_img2img_keep_it():
    from PIL import Image

    flux = validate_request(tiny_request("flux", seed_resize_from_w=512, seed_resize_from_h=512), Family.FLUX)
    assert flux.request.seed_resize_from_w == 512 and not flux.warnings
    init = Image.new("RGB", (64, 64))
    img2img = validate_request(tiny_request("sd15", init_image=init, seed_resize_from_w=128, seed_resize_from_h=128), Family.SD15)
    assert img2img.request.seed_resize_from_w == 128 and not img2img.warnings  # A1111's img2img noise follows it too


@pytest.mark.parametrize("value", [-2, 5000, 64.0, "64", None, True])
def test_a_bad_size_is_refused(value):
    with pytest.raises(InvalidRequest, match="Resize seed from width must be 0 \\(off\\) or a size up to 2048"):
        validate_request(tiny_request("sd15", seed_resize_from_w=value, seed_resize_from_h=64), Family.SD15)
    with pytest.raises(InvalidRequest, match="Resize seed from height must be 0 \\(off\\) or a size up to 2048"):
        validate_request(tiny_request("sd15", seed_resize_from_w=64, seed_resize_from_h=value), Family.SD15)


def test_the_png_the_a1111_api_and_the_cli_carry_it(shared_manager):
    from app import build_parser
    from ui.a1111.mapping import ApiDefaults, prepare
    from ui.a1111.models import Txt2ImgRequest
    from ui.png_info_tab import generate_form_values

    text = "a cat\nSteps: 4, Sampler: Euler, Seed: 4, Size: 96x64"
    values, notes = generate_form_values(text + ", Seed resize from: 64x48", shared_manager, {})
    assert (values["seed_resize_from_w"], values["seed_resize_from_h"]) == (64, 48) and not notes
    values, _ = generate_form_values(text, shared_manager, {})  # none written: off
    assert (values["seed_resize_from_w"], values["seed_resize_from_h"]) == (0, 0)
    values, notes = generate_form_values(text + ", Seed resize from: big", shared_manager, {})
    assert "seed_resize_from_w" not in values and "Seed resize from 'big' is not WIDTHxHEIGHT" in notes[0]

    def api(**fields):
        body = Txt2ImgRequest(prompt="a cat", steps=2, width=96, height=64, **fields)
        return prepare(body, shared_manager, ApiDefaults("tiny-sd15"))

    prepared = api(seed_resize_from_w=64, seed_resize_from_h=64)
    assert (prepared.request.seed_resize_from_w, prepared.request.seed_resize_from_h) == (64, 64) and not prepared.warnings
    assert (api().request.seed_resize_from_w, api().request.seed_resize_from_h) == (0, 0)  # A1111's -1: off, no warning
    assert not api().warnings

    args = build_parser().parse_args(["generate", "--prompt", "x", "--seed-resize-from", "512x768"])
    assert args.seed_resize_from == (512, 768)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--prompt", "x", "--seed-resize-from", "512"])
