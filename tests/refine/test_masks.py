"""Inpaint masks: reading what was painted, A1111's blur, fill, latent mask, masked content and the mask checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.errors import InvalidRequest
from pipelines.refine import (
    EMPTY_MASK_MESSAGE,
    MASKED_CONTENT,
    WHOLE_IMAGE_NOTE,
    blend_latents,
    blur_mask,
    check_mask,
    fill_for_content,
    fill_masked,
    latent_mask,
    mask_from_layers,
    masked_latent,
    overlay_mask,
    painted_mask,
    prepare_mask,
)


def square_mask(size: int = 64, lo: int = 24, hi: int = 40, value: int = 255) -> Image.Image:
    values = np.zeros((size, size), np.uint8)
    values[lo:hi, lo:hi] = value
    return Image.fromarray(values)


def values(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int32)


def gradio_layer(size=(32, 32), colour=(0, 0, 0)) -> tuple[Image.Image, np.ndarray]:
    """An ImageEditor layer: transparent, one opaque stroke with a soft (alpha 40) rim. Returns it and the painted area."""
    rgba = np.zeros((size[1], size[0], 4), np.uint8)
    rgba[8:20, 10:22] = (*colour, 40)
    rgba[10:18, 12:20] = (*colour, 255)
    return Image.fromarray(rgba, "RGBA"), rgba[:, :, 3] > 0


def test_masked_content_choices_are_a1111s_in_a1111s_order():
    assert MASKED_CONTENT == ("fill", "original", "latent noise", "latent nothing")


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 0, 0), (255, 255, 255)])
def test_every_non_transparent_pixel_of_a_painted_layer_is_masked_whatever_the_brush_colour(colour):
    layer, painted = gradio_layer(colour=colour)
    mask = painted_mask(layer)
    assert mask.mode == "L"
    assert (values(mask)[painted] == 255).all()
    assert (values(mask)[~painted] == 0).all()


def test_black_and_white_masks_read_white_as_repaint_in_any_mode():
    mask = square_mask()
    for mode in ("L", "RGB", "RGBA"):  # an opaque RGBA is an exported mask, not a layer
        assert (values(painted_mask(mask.convert(mode))) == values(mask)).all()


def test_grey_in_an_ordinary_mask_stays_grey():
    assert values(painted_mask(Image.new("RGB", (4, 4), (128, 128, 128)))).max() == 128


def test_prepare_mask_stretches_another_size_with_nearest_neighbour():
    small = np.zeros((4, 4), np.uint8)
    small[1, 2] = 255
    mask = prepare_mask(Image.fromarray(small), 16, 16, 0, 0)
    expected = np.zeros((16, 16), np.uint8)
    expected[4:8, 8:12] = 255
    assert mask.size == (16, 16) and (values(mask) == expected).all()  # no half-painted pixel appears


def test_prepare_mask_inverts_before_blurring():
    layer, painted = gradio_layer()
    mask = values(prepare_mask(layer, 32, 32, 0, 0, invert=True))
    assert (mask[painted] == 0).all() and (mask[~painted] == 255).all()
    soft = values(prepare_mask(layer, 32, 32, 2, 2, invert=True))
    assert soft[14, 16] < 128 < soft[0, 0]  # the blurred edge, same line either way


def test_blur_spreads_the_edge_but_keeps_the_centre():
    sharp = square_mask(64, 16, 48)
    soft = values(blur_mask(sharp, 4, 4))
    assert soft[32, 32] == 255  # the middle of the painted area stays fully repainted
    assert soft[0, 0] == 0 and soft[63, 63] == 0  # far away stays kept
    assert 0 < soft[32, 12] < 255 and 0 < soft[32, 50] < 255  # the spread, both sides
    assert abs(soft[32, 16] - 128) < 40  # the painted line sits in the middle of the ramp


def test_blur_x_and_blur_y_act_on_their_own_axis():
    sharp = square_mask(64, 24, 40)
    across = values(blur_mask(sharp, 4, 0))
    assert (across[:24] == 0).all() and (across[40:] == 0).all()  # nothing spreads vertically
    assert across[32, 20] > 0
    down = values(blur_mask(sharp, 0, 4))
    assert (down[:, :24] == 0).all() and down[20, 32] > 0


def test_blur_reaches_as_far_as_a1111s_kernel():
    # A1111 uses 2 * int(2.5 * sigma + 0.5) + 1 taps: for sigma 4, 10 pixels each side and no further.
    dot = np.zeros((1, 41), np.uint8)
    dot[0, 20] = 255
    row = values(blur_mask(Image.fromarray(dot), 4, 0))[0]
    assert row[10] > 0 and row[30] > 0
    assert row[9] == 0 and row[31] == 0
    assert (row[:21] == row[20:][::-1]).all()


def test_blur_matches_the_exact_gaussian_opencv_computes():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    mask = ((rng.random((40, 56)) > 0.7) * 255).astype(np.uint8)
    for sigma in (1, 2.5, 4, 9):
        taps = 2 * int(2.5 * sigma + 0.5) + 1
        # OpenCV on floats (its 8-bit path uses fixed-point coefficients and lands a few levels off).
        expected = cv2.GaussianBlur(mask.astype(np.float32), (taps, 1), sigma)
        assert np.abs(values(blur_mask(Image.fromarray(mask), sigma, 0)) - expected).max() <= 0.5 + 1e-3
        expected = cv2.GaussianBlur(mask.astype(np.float32), (1, taps), sigma)
        assert np.abs(values(blur_mask(Image.fromarray(mask), 0, sigma)) - expected).max() <= 0.5 + 1e-3


def test_no_blur_leaves_the_mask_alone():
    mask = square_mask()
    assert (values(blur_mask(mask, 0, 0)) == values(mask)).all()


def test_overlay_mask_doubles_the_blur():
    ramp = Image.fromarray(np.array([[0, 1, 64, 100, 127, 128, 200, 255]], np.uint8))
    assert values(overlay_mask(ramp)).tolist() == [[0, 2, 128, 200, 254, 255, 255, 255]]


def test_fill_replaces_the_masked_area_with_the_surrounding_colour_and_keeps_the_rest():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = (0, 0, 255)
    image[:, 32:] = (255, 0, 0)
    image[36:52, 40:56] = (0, 255, 0)  # a green square inside the red half: the part to replace
    mask = np.zeros((64, 64), np.uint8)
    mask[34:54, 38:58] = 255
    filled = values(fill_masked(Image.fromarray(image), Image.fromarray(mask)))
    kept = mask == 0
    assert (filled[kept] == image[kept]).all()
    inside = filled[36:52, 40:56]
    assert inside[:, :, 1].max() < 30  # no green left
    assert inside[:, :, 0].min() > 150  # red from around it


def test_fill_for_content_fills_for_every_choice_but_original():
    image = Image.new("RGB", (32, 32), (10, 200, 30))
    image.paste((250, 0, 0), (8, 8, 24, 24))
    mask = square_mask(32, 8, 24)
    assert values(fill_for_content(image, mask, "original")).tolist() == values(image).tolist()
    for content in ("fill", "latent noise", "latent nothing"):
        assert values(fill_for_content(image, mask, content))[16, 16, 0] < 100  # the red square is gone
    with pytest.raises(InvalidRequest, match="latent nothing"):
        fill_for_content(image, mask, "blur")


def test_latent_mask_is_latent_sized_and_rounded_to_zero_or_one():
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255
    latent = latent_mask(blur_mask(Image.fromarray(mask), 4, 4), 8, 8)
    assert latent.shape == (1, 1, 8, 8) and latent.dtype == torch.float32
    assert set(latent.unique().tolist()) == {0.0, 1.0}
    assert (latent[..., :4] == 1).all() and (latent[..., 4:] == 0).all()


def test_latent_mask_keeps_soft_values_when_asked():
    ramp = Image.fromarray(np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1)))
    soft = latent_mask(ramp, 8, 8, round_mask=False)
    assert ((soft > 0.1) & (soft < 0.9)).any()
    assert torch.equal(latent_mask(ramp, 8, 8), soft.round())


def test_latent_noise_and_nothing_change_only_the_masked_latents():
    init, noise = torch.full((1, 4, 4, 4), 2.0), torch.full((1, 4, 4, 4), -7.0)
    nmask = torch.zeros(1, 1, 4, 4)
    nmask[..., :2, :] = 1
    noisy = masked_latent(init, nmask, "latent noise", noise)
    assert (noisy[..., :2, :] == -7).all() and (noisy[..., 2:, :] == 2).all()
    nothing = masked_latent(init, nmask, "latent nothing")
    assert (nothing[..., :2, :] == 0).all() and (nothing[..., 2:, :] == 2).all()
    for content in ("fill", "original"):
        assert torch.equal(masked_latent(init, nmask, content), init)
    with pytest.raises(ValueError, match="noise"):
        masked_latent(init, nmask, "latent noise")


def test_blend_latents_keeps_the_original_outside_the_mask():
    init, denoised = torch.zeros(1, 16, 4, 4), torch.ones(1, 16, 4, 4)
    nmask = torch.zeros(1, 1, 4, 4)
    nmask[..., 1, 1] = 1
    blended = blend_latents(denoised, init, nmask)
    assert blended.sum() == 16 and (blended[..., 1, 1] == 1).all()


def test_an_empty_mask_is_refused_with_a_message_that_says_what_to_do():
    with pytest.raises(InvalidRequest) as raised:
        check_mask(Image.new("L", (16, 16), 0))
    assert str(raised.value) == EMPTY_MASK_MESSAGE
    assert "the mask is empty: paint the area to change" in str(raised.value).lower()
    with pytest.raises(InvalidRequest, match="empty"):
        check_mask(Image.new("RGBA", (16, 16), (255, 0, 0, 0)))  # a layer with nothing painted
    with pytest.raises(InvalidRequest, match="empty"):
        check_mask(Image.new("L", (16, 16), 255), invert=True)  # "inpaint not masked" of everything


def test_an_all_white_mask_is_allowed_with_a_note():
    assert check_mask(Image.new("L", (16, 16), 255)) == (WHOLE_IMAGE_NOTE,)
    assert "the whole image is repainted" in WHOLE_IMAGE_NOTE
    assert check_mask(Image.new("L", (16, 16), 0), invert=True) == (WHOLE_IMAGE_NOTE,)


def test_an_ordinary_mask_gives_no_note_and_a_resized_one_says_so():
    assert check_mask(square_mask(), (64, 64)) == ()
    (note,) = check_mask(square_mask(), (128, 96))
    assert "64x64" in note and "128x96" in note


def test_several_editor_layers_make_one_mask():
    first, painted_first = gradio_layer()
    second = np.zeros((32, 32, 4), np.uint8)
    second[25:30, 2:6] = (9, 9, 9, 255)
    mask = values(mask_from_layers([first, None, Image.fromarray(second, "RGBA")]))
    assert (mask[painted_first] == 255).all() and (mask[25:30, 2:6] == 255).all()
    assert mask.sum() == 255 * (painted_first.sum() + 20)
    assert mask_from_layers([]) is None


def test_no_mask_at_all_is_an_empty_mask():
    with pytest.raises(InvalidRequest, match="paint the area"):
        check_mask(None)


def test_the_blur_gives_the_same_mask_whatever_chunks_it_works_in(monkeypatch):
    from pipelines.refine import masks

    mask = Image.fromarray(((np.random.default_rng(2).random((37, 53)) > 0.6) * 255).astype(np.uint8))
    whole = values(blur_mask(mask, 3, 5))
    monkeypatch.setattr(masks, "_BLUR_CHUNK_VALUES", 100)  # a few lines per chunk, chunk edges everywhere
    assert (values(blur_mask(mask, 3, 5)) == whole).all()
