"""img2img and inpainting through the manager, on the tiny SD 1.5 / SDXL / FLUX.1 models and a tiny
9-channel inpainting UNet: the stages, the strength ends, the mask keeping what is outside it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines.errors import InvalidRequest
from tests.tiny_models import tiny_request

FAMILIES = ("sd15", "sdxl", "flux")


def picture(size: int, seed: int = 0) -> Image.Image:
    """A test picture with structure (shapes on a gradient), so a VAE round trip keeps something."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, size, dtype=np.float32)
    base = np.stack([np.add.outer(x, x) / 2, np.add.outer(x[::-1], x) / 2, np.full((size, size), 128.0)], axis=-1)
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.integers(0, size - size // 4, 2)
        draw.ellipse([int(x0), int(y0), int(x0) + size // 4, int(y0) + size // 4], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


def box_mask(size: int, box: tuple) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def pixels(result, index: int = 0) -> np.ndarray:
    return np.asarray(result.images[index].image, dtype=np.int16)


@pytest.fixture(scope="module")
def manager(shared_manager):
    return shared_manager


@pytest.mark.parametrize("family", FAMILIES)
def test_strength_zero_gives_the_input_back_and_one_ignores_it(manager, family):
    size = tiny_request(family).width
    init = picture(size)
    base = tiny_request(family, seed=3, steps=4, init_image=init, denoising_strength=0.0)
    zero = manager.generate(base)
    assert "img encode" in zero.stage_seconds and zero.step_seconds == []
    # The VAE round trip of the input, nothing else: the same as encoding and decoding it by hand.
    from pipelines.stages.init_image import encode_pixels
    from pipelines.generate import decode_latents, VaeSettings
    with manager.use(f"tiny-{family}") as model:
        from pipelines.refine import resize_image
        latents, _ = encode_pixels(model, resize_image(init, "Just resize", size, size), VaeSettings())
        from pipelines.stages.init_image import packed
        round_trip, _ = decode_latents(model, packed(model, latents), size, size, VaeSettings())
    assert np.abs(pixels(zero) - np.asarray(round_trip[0], dtype=np.int16)).max() <= 1  # float rounding of scale/unscale
    full = manager.generate(dataclasses.replace(base, denoising_strength=1.0))
    other = manager.generate(dataclasses.replace(base, denoising_strength=1.0, init_image=picture(size, seed=9)))
    txt2img = manager.generate(dataclasses.replace(base, init_image=None))
    assert np.array_equal(pixels(full), pixels(other)) and np.array_equal(pixels(full), pixels(txt2img))
    half = manager.generate(dataclasses.replace(base, denoising_strength=0.5))
    assert len(half.step_seconds) == 2  # int(4 * 0.5): the last half of the schedule
    assert not np.array_equal(pixels(half), pixels(zero)) and not np.array_equal(pixels(half), pixels(txt2img))


@pytest.mark.parametrize("family", FAMILIES)
def test_inpainting_keeps_pixels_outside_the_mask_and_changes_those_inside(manager, family):
    size = tiny_request(family).width
    init = picture(size, seed=2)
    mask = box_mask(size, (size // 4, size // 4, size // 2, size // 2))
    result = manager.generate(tiny_request(family, seed=5, steps=3, init_image=init, mask=mask, denoising_strength=0.9, mask_blur=0))
    assert {"img encode", "denoise", "VAE decode", "paste back"} <= set(result.stage_seconds)
    out, original = pixels(result), np.asarray(init, dtype=np.int16)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], original[outside]), "pixels outside the mask changed"
    inside = np.asarray(mask) == 255
    assert np.abs(out[inside] - original[inside]).mean() > 3


def test_only_masked_inpaints_a_crop_and_pastes_it_back(manager):
    init = picture(128, seed=4)  # larger than the generation size: "only masked" works at 64 px on a crop
    mask = box_mask(128, (70, 70, 90, 90))
    result = manager.generate(tiny_request("sd15", seed=5, steps=3, init_image=init, mask=mask, inpaint_full_res=True,
                                           inpaint_full_res_padding=8, mask_blur=0))
    assert result.images[0].image.size == (128, 128)  # the original's size, not the generation size
    out, original = pixels(result), np.asarray(init, dtype=np.int16)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], original[outside])
    assert np.abs(out[np.asarray(mask) == 255] - original[np.asarray(mask) == 255]).mean() > 3


def test_an_init_image_of_another_size_is_resized_as_the_mode_says(manager):
    wide = picture(64).resize((128, 64))
    for mode in ("Just resize", "Crop and resize", "Resize and fill"):
        result = manager.generate(tiny_request("sd15", seed=1, steps=2, init_image=wide, resize_mode=mode, denoising_strength=0.0))
        assert result.images[0].image.size == (64, 64)


def test_the_exact_repeat_cache_keys_on_the_init_image_and_strength(make_manager, shared_models_dir):
    manager = make_manager(shared_models_dir, latent_cache_entries=8)
    request = tiny_request("sd15", seed=7, steps=4, init_image=picture(64), denoising_strength=0.5)
    manager.generate(request)
    assert manager.generate(request).cache_notes["latent cache"].startswith("hit")
    assert manager.generate(dataclasses.replace(request, init_image=picture(64, seed=5))).cache_notes["latent cache"] == "miss"
    assert manager.generate(dataclasses.replace(request, denoising_strength=0.75)).cache_notes["latent cache"] == "miss"


def test_bad_refine_input_says_why(manager):
    init = picture(64)
    cases = [
        (dict(init_image=init, denoising_strength=1.5), "Denoising strength must be between 0 and 1, got 1.5"),
        (dict(init_image="photo.png"), "The init image must be an image, got str"),
        (dict(mask=box_mask(64, (0, 0, 8, 8))), "A mask needs an init image"),
        (dict(init_image=init, mask=Image.new("L", (64, 64), 0)), "The mask is empty: paint the area to change."),
        (dict(init_image=init, resize_mode="Stretch"), "Resize mode must be one of Just resize, Crop and resize, Resize and fill"),
        (dict(init_image=init, mask=box_mask(64, (0, 0, 8, 8)), inpainting_fill="blur"), "Masked content must be one of fill, original"),
        (dict(init_image=init, mask_blur=-1), "Mask blur must be between 0 and 64"),
    ]
    for fields, message in cases:
        with pytest.raises(InvalidRequest, match=message.replace("(", r"\(")):
            manager.generate(tiny_request("sd15", **fields))
    white = manager.generate(tiny_request("sd15", steps=2, init_image=init, mask=Image.new("L", (64, 64), 255)))
    assert "The mask covers the whole image: the whole image is repainted." in white.warnings
    other_size = manager.generate(tiny_request("sd15", steps=2, init_image=init, mask=box_mask(32, (4, 4, 12, 12))))
    assert any("stretched" in w for w in other_size.warnings)
    approx = manager.generate(tiny_request("sd15", steps=2, init_image=init, approximate_cache=True))
    assert any("approximate cache is off for img2img" in w for w in approx.warnings) and "approx cache" not in approx.cache_notes


def test_a_nine_channel_inpainting_unet_loads_and_runs(tmp_path, make_manager, tiny_pipes):
    from diffusers import UNet2DConditionModel

    from pipelines.bench.tiny_models import save_tiny_pipeline

    pipe = tiny_pipes["sd15"]
    unet = UNet2DConditionModel.from_config(pipe.unet.config, in_channels=9)
    assert unet.conv_in.weight.shape[1] == 9
    inpainting = type(pipe)(**(pipe.components | {"unet": unet}))
    save_tiny_pipeline(inpainting, tmp_path / "models" / "tiny-inpainting")
    manager = make_manager(tmp_path / "models")
    entry = manager.entry("tiny-inpainting")
    assert entry.usable, entry.problem
    init, mask = picture(64), box_mask(64, (16, 16, 40, 40))
    result = manager.generate(tiny_request("sd15", model="tiny-inpainting", steps=2, init_image=init, mask=mask, mask_blur=0))
    outside = np.asarray(mask) == 0
    assert np.array_equal(pixels(result)[outside], np.asarray(init, dtype=np.int16)[outside])
    with pytest.raises(InvalidRequest, match="inpainting model.*needs an init image and a mask"):
        manager.generate(tiny_request("sd15", model="tiny-inpainting", steps=2))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_single_file_inpainting_checkpoint_is_usable(tmp_path, make_manager, tiny_pipes, family):
    """A1111-style inpainting checkpoints (9-channel UNet in the original layout) load from the single file
    even though the config folder (bundled or beside it) describes the 4-channel text-to-image UNet."""
    from diffusers import UNet2DConditionModel

    from tests.ldm_layout import export_ldm_checkpoint
    from tests.tiny_models import save_config_only

    pipe = tiny_pipes[family]
    unet = UNet2DConditionModel.from_config(pipe.unet.config, in_channels=9)
    inpainting = type(pipe)(**(pipe.components | {"unet": unet}))
    models = tmp_path / "models"
    export_ldm_checkpoint(inpainting, models / f"inpaint-{family}.safetensors", family)
    save_config_only(pipe, models / f"inpaint-{family}.config")  # says 4 channels, as the bundled configs do
    manager = make_manager(models)
    entry = manager.entry(f"inpaint-{family}")
    assert entry.usable, entry.problem
    size = tiny_request(family).width
    init, mask = picture(size), box_mask(size, (size // 4, size // 4, size // 2, size // 2))
    result = manager.generate(tiny_request(family, model=f"inpaint-{family}", steps=2, init_image=init, mask=mask, mask_blur=0))
    outside = np.asarray(mask) == 0
    assert np.array_equal(pixels(result)[outside], np.asarray(init, dtype=np.int16)[outside])
    with manager.use(f"inpaint-{family}") as model:
        assert model.pipe.unet.config.in_channels == 9


def test_an_instruct_checkpoint_is_listed_with_why():
    from pipelines.checkpoints import detect_layout

    header = {"cond_stage_model.transformer.x": {}, "model.diffusion_model.input_blocks.0.0.weight": {"shape": [320, 8, 3, 3]}}
    layout = detect_layout(header)
    assert layout.family is None and "takes 8 input channels" in layout.problem


def test_a_diffusers_inpainting_folder_is_listed_and_inpaints(tmp_path, make_manager, tiny_pipes):
    """What diffusers saves for an inpainting model: `StableDiffusionInpaintPipeline` in model_index.json."""
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    from pipelines.bench.tiny_models import save_tiny_pipeline

    pipe = tiny_pipes["sd15"]
    unet = UNet2DConditionModel.from_config(pipe.unet.config, in_channels=9)
    folder = save_tiny_pipeline(StableDiffusionInpaintPipeline(**(pipe.components | {"unet": unet})), tmp_path / "models" / "sd-inpainting")
    assert "StableDiffusionInpaintPipeline" in (folder / "model_index.json").read_text()
    manager = make_manager(tmp_path / "models")
    assert manager.entry("sd-inpainting").usable, manager.entry("sd-inpainting").problem
    init, mask = picture(64), box_mask(64, (16, 16, 40, 40))
    result = manager.generate(tiny_request("sd15", model="sd-inpainting", steps=2, init_image=init, mask=mask, mask_blur=0))
    outside = np.asarray(mask) == 0
    assert np.array_equal(pixels(result)[outside], np.asarray(init, dtype=np.int16)[outside])
