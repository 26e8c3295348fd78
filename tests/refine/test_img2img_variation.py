"""A1111's variation seed and Resize seed from in img2img, inpainting and the hires pass (its ImageRNG makes their noise
as it makes text-to-image's): diffusers' pipelines draw their own noise, and Likeness hands the scheduler the seed's
instead (pipelines/stages/denoise.noise_replaced). With a sampler that adds no noise of its own (Euler), variation
strength 1 is the variation seed's picture: run(seed A, variation B at 1) = run(seed B)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.infotext import parse_infotext
from tests.refine.test_img2img_inpaint import box_mask, picture
from tests.tiny_models import tiny_request

SIZE = 64


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


def close(a, b) -> bool:
    """The same picture up to the slerp's float rounding (a level or so)."""
    return np.abs(a - b).max() <= 2


@pytest.fixture(scope="module")
def start():
    return picture(SIZE, seed=4)


MODES = ["text-to-image", "img2img", "inpaint", "inpaint from noise", "hires"]


@pytest.mark.parametrize("family", ["sd15", "flux"])
@pytest.mark.parametrize("mode", MODES)
def test_variation_strength_1_is_the_variation_seeds_picture(shared_manager, start, mode, family):
    """FLUX.1 too: its flow-match Euler adds no noise of its own, and its noise is drawn, mixed and packed as the
    pipeline would draw and pack it."""
    size = SIZE if family == "sd15" else 256  # FLUX.1 starts at 256 px
    picture_ = start if family == "sd15" else picture(size, seed=4)
    mask = box_mask(size, (8, 8, size - 16, size - 16))
    fields = {"text-to-image": {},
              "img2img": {"init_image": picture_, "denoising_strength": 0.6},
              "inpaint": {"init_image": picture_, "mask": mask, "denoising_strength": 0.7},
              "inpaint from noise": {"init_image": picture_, "mask": mask, "denoising_strength": 1.0},
              "hires": {"hires_scale": 1.5, "hires_steps": 4, "hires_denoising": 0.6}}[mode]
    sampler = "Euler" if family == "sd15" else "Flow Euler"
    base = tiny_request(family, sampler=sampler, steps=4, seed=101, width=size, height=size, save=False, **fields)
    varied = shared_manager.generate(dataclasses.replace(base, subseed=202, subseed_strength=1.0))
    as_seed = shared_manager.generate(dataclasses.replace(base, seed=202))
    plain = shared_manager.generate(base)
    assert close(pixels(varied), pixels(as_seed)), "the noise was not the variation seed's"
    assert not close(pixels(varied), pixels(plain))
    params = parse_infotext(varied.images[0].infotext)
    assert (params["Variation seed"], params["Variation seed strength"]) == ("202", "1")
    assert all("variation" not in w.lower() for w in varied.warnings), varied.warnings


def test_half_strength_is_between_and_repeats(shared_manager, start):
    base = tiny_request("sd15", sampler="Euler", steps=4, seed=101, width=SIZE, height=SIZE, save=False, init_image=start,
                        denoising_strength=0.8, subseed=202, subseed_strength=0.5)
    half, again = shared_manager.generate(base), shared_manager.generate(base)
    assert np.array_equal(pixels(half), pixels(again))
    ends = [pixels(shared_manager.generate(dataclasses.replace(base, subseed_strength=s))) for s in (0.0, 1.0)]
    assert not close(pixels(half), ends[0]) and not close(pixels(half), ends[1])


def test_flux_resize_seed_from_keeps_the_seeds_noise_in_the_middle(shared_manager):
    """FLUX.1's noise at the resize-from size, centred in the picture's, packed: the run differs from the plain one and
    says so in the PNG."""
    base = tiny_request("flux", sampler="Flow Euler", steps=3, seed=5, width=320, height=256, save=False)
    resized = shared_manager.generate(dataclasses.replace(base, seed_resize_from_w=256, seed_resize_from_h=256))
    assert parse_infotext(resized.images[0].infotext)["Seed resize from"] == "256x256"
    assert not np.array_equal(pixels(resized), pixels(shared_manager.generate(base)))


def test_resize_seed_from_shapes_img2img_noise(shared_manager, start):
    base = tiny_request("sd15", sampler="Euler", steps=4, seed=101, width=SIZE, height=SIZE, save=False, init_image=start,
                        denoising_strength=0.8)
    resized = shared_manager.generate(dataclasses.replace(base, seed_resize_from_w=32, seed_resize_from_h=48))
    assert parse_infotext(resized.images[0].infotext)["Seed resize from"] == "32x48"
    assert not close(pixels(resized), pixels(shared_manager.generate(base)))
    assert not any("Resize seed from" in w for w in resized.warnings)


def test_the_scheduler_is_left_as_it_was(shared_manager, start):
    """The replaced add_noise is the pass's only: after the run the scheduler adds noise with its own method again."""
    shared_manager.generate(tiny_request("sd15", sampler="Euler", steps=2, seed=1, width=SIZE, height=SIZE, save=False, init_image=start,
                                         denoising_strength=0.5, subseed=3, subseed_strength=0.5))
    with shared_manager.use("tiny-sd15") as model:
        assert "add_noise" not in vars(model.pipe.scheduler)
