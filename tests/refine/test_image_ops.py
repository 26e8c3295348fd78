"""Resize modes, paste-back and the feathered paste: sizes, where the content lands, which pixels may change."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipelines.errors import InvalidRequest
from pipelines.refine import (
    CROP_AND_RESIZE,
    JUST_RESIZE,
    RESIZE_AND_FILL,
    RESIZE_MODES,
    crop_region,
    crop_to_target,
    expand_region,
    feathered_mask,
    flatten_image,
    paste_back,
    paste_feathered,
    resize_image,
)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def stripes(colours, stripe_w: int, height: int) -> Image.Image:
    """Vertical stripes, left to right."""
    row = np.concatenate([np.tile(np.array(c, np.uint8), (stripe_w, 1)) for c in colours])
    return Image.fromarray(np.tile(row[None], (height, 1, 1)))


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int32)


def test_the_three_modes_are_a1111s_in_a1111s_order():
    # The index is A1111's API resize_mode: the API maps integers through this tuple.
    assert RESIZE_MODES == ("Just resize", "Crop and resize", "Resize and fill")


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 90), st.integers(1, 90), st.integers(1, 90), st.integers(1, 90), st.sampled_from(RESIZE_MODES))
def test_every_mode_gives_exactly_the_asked_size(src_w, src_h, width, height, mode):
    out = resize_image(noise(src_w, src_h), mode, width, height)
    assert out.size == (width, height)
    assert out.mode == "RGB"


def test_a_mask_stays_a_mask():
    mask = Image.new("L", (40, 20), 255)
    for mode in RESIZE_MODES:
        out = resize_image(mask, mode, 32, 32)
        assert out.mode == "L" and out.size == (32, 32)


def test_rgba_becomes_rgb():
    assert resize_image(Image.new("RGBA", (10, 10), (1, 2, 3, 0)), JUST_RESIZE, 10, 10).mode == "RGB"


def test_just_resize_stretches_without_cropping():
    out = pixels(resize_image(stripes([RED, GREEN, BLUE], 30, 30), JUST_RESIZE, 45, 60))
    # Each colour keeps its third of the width (away from the Lanczos seams); nothing is cut or filled.
    assert (out[:, 2:12] == RED).all() and (out[:, 18:27] == GREEN).all() and (out[:, 33:] == BLUE).all()


def test_crop_and_resize_of_a_wide_image_keeps_the_centre():
    wide = stripes([RED, GREEN, BLUE], 100, 100)  # 300x100: the centre third is green
    out = pixels(resize_image(wide, CROP_AND_RESIZE, 100, 100))
    assert (out == GREEN).all()


def test_crop_and_resize_of_a_tall_image_keeps_the_middle_rows():
    bands = np.concatenate([np.tile(np.array(c, np.uint8), (40, 40, 1)) for c in (RED, GREEN, BLUE)])  # 40x120
    out = pixels(resize_image(Image.fromarray(bands), CROP_AND_RESIZE, 40, 40))
    assert (out == GREEN).all()


def test_crop_and_resize_scales_before_cropping():
    out = resize_image(stripes([RED, GREEN, BLUE], 100, 100), CROP_AND_RESIZE, 50, 50)
    out = pixels(out)  # 300x100 -> 150x50, the centre 50 columns: green, with a faint Lanczos seam at the sides
    assert (out[:, 3:47] == GREEN).all()
    assert (out[:, :, 1] > 200).all()


def test_resize_and_fill_fits_the_whole_picture_and_fills_the_bands_with_the_stretched_edge():
    # 200x100 into 100x100: the picture becomes 100x50, centred at rows 25..74; the bands above and
    # below are the first and last row stretched. Columns vary, rows do not: the edge row is exact.
    gradient = np.tile(np.linspace(0, 255, 200).astype(np.uint8)[None, :, None], (100, 1, 3))
    out = pixels(resize_image(Image.fromarray(gradient), RESIZE_AND_FILL, 100, 100))
    picture = pixels(Image.fromarray(gradient).resize((100, 50), Image.Resampling.LANCZOS))
    assert (out[25:75] == picture).all()
    assert (out[:25] == out[25]).all()
    assert (out[75:] == out[74]).all()


def test_resize_and_fill_bands_repeat_one_line_close_to_the_edge():
    src = noise(60, 30, seed=3)
    out = pixels(resize_image(src, RESIZE_AND_FILL, 60, 60))
    top, bottom = out[:15], out[45:]
    assert (top == top[0]).all() and (bottom == bottom[0]).all()
    # A1111 stretches a zero-height strip at the edge with bicubic filtering: the edge line nudged
    # outwards (1.125 x edge - 0.125 x next line), never something unrelated.
    picture = out[15:45]
    expected = np.clip(1.125 * picture[0] - 0.125 * picture[1], 0, 255)
    assert np.abs(top[0] - expected).max() <= 1


def test_resize_and_fill_of_a_tall_image_fills_left_and_right():
    tall = np.tile(np.linspace(0, 255, 80).astype(np.uint8)[:, None, None], (1, 40, 3))  # rows vary
    out = pixels(resize_image(Image.fromarray(tall), RESIZE_AND_FILL, 80, 80))
    assert (out[:, :20] == out[:, 20:21]).all()
    assert (out[:, 60:] == out[:, 59:60]).all()


def test_resize_and_fill_leaves_no_black_line_when_the_blank_is_odd():
    # 64x30 into 64x33: 1 blank row above, 2 below (A1111 fills one and leaves a black line).
    out = pixels(resize_image(Image.new("RGB", (64, 30), (200, 100, 50)), RESIZE_AND_FILL, 64, 33))
    assert (out == (200, 100, 50)).all()


def test_an_unknown_mode_names_the_choices():
    with pytest.raises(InvalidRequest, match="Crop and resize"):
        resize_image(noise(8, 8), "Stretch", 8, 8)


def test_crop_to_target_gives_the_generation_size():
    out = crop_to_target(noise(100, 80), (10, 20, 40, 50), 64, 64)
    assert out.size == (64, 64)


@settings(max_examples=40, deadline=None)
@given(st.integers(16, 80), st.integers(16, 80), st.integers(0, 10_000), st.integers(0, 12),
       st.sampled_from([(64, 64), (96, 64), (64, 96)]), st.booleans())
def test_paste_back_keeps_every_unmasked_pixel_bit_identical(width, height, seed, padding, target, only_masked):
    rng = np.random.default_rng(seed)
    original = noise(width, height, seed)
    mask_values = np.zeros((height, width), np.uint8)
    x, y = rng.integers(0, width - 4), rng.integers(0, height - 4)
    mask_values[y:y + rng.integers(1, 20), x:x + rng.integers(1, 20)] = rng.integers(1, 256)
    mask_values[rng.random((height, width)) < 0.02] = 255
    mask = Image.fromarray(mask_values)
    region = expand_region(crop_region(mask, padding), *target, width, height) if only_masked else None
    generated = noise(*target, seed + 1) if only_masked else noise(width, height, seed + 1)

    result = pixels(paste_back(original, generated, region, mask))

    kept = mask_values == 0
    assert (result[kept] == pixels(original)[kept]).all()
    # Fully masked pixels are exactly the generated picture, brought back to the region.
    x1, y1, x2, y2 = region or (0, 0, width, height)
    fitted = pixels(resize_image(generated, CROP_AND_RESIZE, x2 - x1, y2 - y1))
    full = mask_values[y1:y2, x1:x2] == 255
    assert (result[y1:y2, x1:x2][full] == fitted[full]).all()


def test_paste_back_blends_half_masked_pixels_half_way():
    original, generated = Image.new("RGB", (8, 8), (0, 0, 0)), Image.new("RGB", (8, 8), (200, 100, 254))
    result = pixels(paste_back(original, generated, None, Image.new("L", (8, 8), 128)))
    assert np.abs(result - np.array([100, 50, 127])).max() <= 1


def test_paste_back_refuses_a_mask_of_another_size():
    with pytest.raises(ValueError, match="mask"):
        paste_back(noise(8, 8), noise(8, 8), None, Image.new("L", (4, 4)))


def test_feathered_mask_is_one_inside_and_zero_on_the_border():
    weight = feathered_mask(40, 30, 8)
    assert weight.shape == (30, 40)
    assert (weight[8:-8, 8:-8] == 1).all()
    assert (weight[0] == 0).all() and (weight[-1] == 0).all() and (weight[:, 0] == 0).all() and (weight[:, -1] == 0).all()
    row = weight[15, :20]
    assert (np.diff(row) >= 0).all()  # rises smoothly towards the inside
    assert np.allclose(weight, weight[::-1, ::-1])


def test_feathered_mask_never_leaves_the_centre_soft():
    assert feathered_mask(9, 9, 100)[4, 4] == 1
    assert (feathered_mask(5, 7, 0) == 1).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(8, 60), st.integers(8, 60), st.integers(0, 10_000), st.integers(0, 10))
def test_paste_feathered_changes_only_the_region(width, height, seed, feather):
    rng = np.random.default_rng(seed)
    x1, y1 = int(rng.integers(0, width - 2)), int(rng.integers(0, height - 2))
    x2, y2 = int(rng.integers(x1 + 1, width + 1)), int(rng.integers(y1 + 1, height + 1))
    base, patch = noise(width, height, seed), noise(32, 32, seed + 1)

    result = pixels(paste_feathered(base, patch, (x1, y1, x2, y2), feather))

    outside = np.ones((height, width), bool)
    outside[y1:y2, x1:x2] = False
    assert (result[outside] == pixels(base)[outside]).all()


def test_paste_feathered_puts_the_patch_in_the_middle_and_the_base_on_the_rim():
    base, patch = Image.new("RGB", (100, 100), BLUE), Image.new("RGB", (64, 64), RED)
    result = pixels(paste_feathered(base, patch, (20, 20, 80, 80), 10))
    assert (result[30:70, 30:70] == RED).all()
    assert (result[20, 20:80] == BLUE).all() and (result[20:80, 79] == BLUE).all()
    assert 0 < result[24, 50, 0] < 255  # the ramp


def test_flatten_lays_transparency_on_white_and_keeps_opaque_pixels():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2] = (10, 20, 30, 255)
    rgba[2:] = (0, 0, 0, 0)  # transparent: black underneath, white after flattening
    flat = pixels(flatten_image(Image.fromarray(rgba, "RGBA")))
    assert (flat[:2] == (10, 20, 30)).all() and (flat[2:] == 255).all()
    assert flatten_image(Image.new("L", (2, 2), 7)).mode == "RGB"


def test_a_palette_image_is_resized_with_lanczos_not_nearest():
    palette = stripes([RED, BLUE], 8, 8).convert("P")
    out = pixels(resize_image(palette, JUST_RESIZE, 32, 8))
    assert out.shape == (8, 32, 3)
    assert len({tuple(p) for p in out[4]}) > 2  # a Lanczos seam between the colours, not a hard step


def test_feathered_mask_fades_only_the_sides_asked():
    weight = feathered_mask(20, 20, 5, sides=(False, True, True, True))
    assert (weight[5:15, 0] == 1).all()  # left edge: hard
    assert (weight[:, -1] == 0).all() and (weight[0] == 0).all()


def test_a_face_region_on_the_picture_border_is_new_right_up_to_the_border():
    base, patch = Image.new("RGB", (100, 100), BLUE), Image.new("RGB", (64, 64), RED)
    result = pixels(paste_feathered(base, patch, (0, 20, 60, 80), 10))
    assert (result[30:70, 0] == RED).all()  # the frame's edge: no fade back to the old picture
    assert (result[30:70, 59] == BLUE).all()  # the inner edge still fades out


@pytest.mark.parametrize("sides", [(True, False, True, False), (False, True, False, True), (False, False, False, True)])
def test_feathered_mask_with_whole_axes_hard(sides):
    weight = feathered_mask(12, 10, 3, sides=sides)
    assert weight.shape == (10, 12) and weight.max() == 1
    left, top, right, bottom = sides
    assert (weight[:, 0] == 0).all() == left and (weight[-1] == 0).all() == bottom
