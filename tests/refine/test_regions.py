"""Regions for "only masked" inpainting and the face detailer: padding, clamping, aspect ratio, always inside the image."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipelines.errors import InvalidRequest
from pipelines.refine import crop_region, expand_region, face_crop_region, region_inside


def mask_with_block(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    values = np.zeros((height, width), np.uint8)
    x1, y1, x2, y2 = box
    values[y1:y2, x1:x2] = 255
    return Image.fromarray(values)


def contains(outer, inner) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


@st.composite
def image_and_region(draw):
    image_w, image_h = draw(st.integers(1, 400)), draw(st.integers(1, 400))
    x1, y1 = draw(st.integers(0, image_w - 1)), draw(st.integers(0, image_h - 1))
    x2, y2 = draw(st.integers(x1 + 1, image_w)), draw(st.integers(y1 + 1, image_h))
    return image_w, image_h, (x1, y1, x2, y2)


def test_crop_region_is_the_painted_box_plus_padding():
    mask = mask_with_block(100, 80, (30, 10, 40, 20))
    assert crop_region(mask, 0) == (30, 10, 40, 20)
    assert crop_region(mask, 5) == (25, 5, 45, 25)


def test_crop_region_padding_stops_at_the_borders():
    mask = mask_with_block(100, 80, (2, 70, 10, 80))
    assert crop_region(mask, 32) == (0, 38, 42, 80)


def test_crop_region_counts_any_non_zero_pixel():
    values = np.zeros((20, 20), np.uint8)
    values[3, 4] = 1  # the faint tail of a blur still belongs to the crop
    values[15, 17] = 255
    assert crop_region(Image.fromarray(values), 0) == (4, 3, 18, 16)


def test_crop_region_of_an_empty_mask_says_the_mask_is_empty():
    with pytest.raises(InvalidRequest, match="empty"):
        crop_region(Image.new("L", (10, 10)), 4)


@settings(max_examples=200, deadline=None)
@given(image_and_region(), st.integers(0, 64))
def test_crop_region_is_always_inside_the_image_and_covers_the_painting(case, padding):
    image_w, image_h, box = case
    region = crop_region(mask_with_block(image_w, image_h, box), padding)
    assert region_inside(region, image_w, image_h)
    assert contains(region, box)


def test_expand_region_follows_a1111s_example():
    # A1111's docstring: a 128x32 mask region processed at 512x512 becomes 128x128.
    x1, y1, x2, y2 = expand_region((192, 240, 320, 272), 512, 512, 512, 512)
    assert (x2 - x1, y2 - y1) == (128, 128)
    assert (x1, x2) == (192, 320) and (y1, y2) == (192, 320)  # grown evenly around the middle


def test_expand_region_grows_only_the_short_axis_to_the_target_ratio():
    region = expand_region((100, 100, 120, 200), 768, 512, 1000, 1000)  # 20x100 at 3:2
    x1, y1, x2, y2 = region
    assert (y1, y2) == (100, 200)
    assert x2 - x1 == 150


def test_expand_region_slides_back_inside_at_the_edge():
    x1, y1, x2, y2 = expand_region((0, 0, 100, 20), 512, 512, 400, 400)
    assert (x1, y1, x2, y2) == (0, 0, 100, 100)
    x1, y1, x2, y2 = expand_region((300, 380, 400, 400), 512, 512, 400, 400)
    assert (x1, y1, x2, y2) == (300, 300, 400, 400)


def test_expand_region_clamps_to_the_image_when_the_ratio_cannot_fit():
    assert expand_region((0, 40, 200, 60), 512, 512, 200, 100) == (0, 0, 200, 100)


@settings(max_examples=300, deadline=None)
@given(image_and_region(), st.integers(64, 1536), st.integers(64, 1536))
def test_expand_region_stays_inside_contains_the_region_and_keeps_the_aspect(case, target_w, target_h):
    image_w, image_h, region = case
    expanded = expand_region(region, target_w, target_h, image_w, image_h)
    assert region_inside(expanded, image_w, image_h)
    assert contains(expanded, region)
    x1, y1, x2, y2 = expanded
    w, h = x2 - x1, y2 - y1
    ratio = target_w / target_h
    # Where the image leaves room, the region has the target's ratio up to A1111's int() truncation
    # of the grown side: less than one pixel of it.
    if w < image_w and h < image_h:
        assert abs(w - h * ratio) < max(ratio, 1.0)


def test_face_region_is_a_padded_square_around_a_face_in_the_middle():
    region = face_crop_region((450, 300, 550, 420), 1024, 1024, 0.25, 512)
    x1, y1, x2, y2 = region
    assert x2 - x1 == y2 - y1 == 180  # longer side 120, plus a quarter of it on each side
    assert abs((x1 + x2) / 2 - 500) <= 1 and abs((y1 + y2) / 2 - 360) <= 1


def test_face_region_takes_the_target_aspect():
    x1, y1, x2, y2 = face_crop_region((450, 300, 550, 400), 2000, 2000, 0.0, (768, 512))
    assert (x2 - x1, y2 - y1) == (150, 100)


def test_face_region_slides_inside_at_a_corner_and_keeps_its_size():
    assert face_crop_region((0, 0, 40, 40), 500, 500, 0.5, 512) == (0, 0, 80, 80)
    assert face_crop_region((460, 470, 500, 500), 500, 500, 0.5, 512) == (420, 420, 500, 500)


def test_face_region_never_exceeds_the_image():
    assert face_crop_region((10, 10, 90, 60), 100, 64, 1.0, 512) == (0, 0, 100, 64)


def test_face_box_outside_the_image_is_an_error():
    with pytest.raises(ValueError, match="face box"):
        face_crop_region((200, 200, 300, 300), 100, 100, 0.2, 512)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 1200), st.integers(1, 1200), st.floats(0, 1), st.floats(0, 1), st.floats(0.001, 1),
       st.floats(0.001, 1), st.floats(0, 2), st.sampled_from([512, (768, 512), (512, 768), 1024]))
def test_face_region_is_inside_the_image_and_covers_the_face(image_w, image_h, fx, fy, fw, fh, padding, target):
    x1, y1 = fx * image_w, fy * image_h
    box = (x1, y1, min(x1 + fw * image_w, image_w), min(y1 + fh * image_h, image_h))
    assume(box[2] - box[0] > 1e-6 and box[3] - box[1] > 1e-6)
    region = face_crop_region(box, image_w, image_h, padding, target)
    assert region_inside(region, image_w, image_h)
    assert contains(region, (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])))
