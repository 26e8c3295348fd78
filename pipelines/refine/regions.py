"""Where to cut: the region around the painted mask ("Inpaint area: Only masked") and around a detected face.

Generating only the area around the mask, at the full generation size, gives the masked area many
more pixels than repainting the whole picture would: a small face in a large photo comes back
detailed. A1111 (`modules/masking.py`) finds the mask's bounding box, adds the padding the user chose
("Only masked padding, pixels", 32 by default), then grows the box to the generation size's aspect
ratio so the crop is scaled, not distorted:

    region = expand_region(crop_region(mask, 32), 512, 512, *image.size)

Every region is (x1, y1, x2, y2), right/bottom exclusive, always inside the image.
"""
from __future__ import annotations

import math

from PIL import Image

from pipelines.errors import InvalidRequest
from pipelines.refine.image_ops import Region
from pipelines.refine.masks import EMPTY_MASK_MESSAGE


def crop_region(mask: Image.Image, padding: int) -> Region:
    """The bounding box of every non-zero mask pixel, grown by `padding` on each side and clamped to the mask.

    Pass the blurred mask, as A1111 does: the blur's soft edge then lies inside the crop and blends
    back without a seam. An empty mask raises InvalidRequest (A1111 silently falls back to repainting
    the whole picture; here the user is told, as `check_mask` does earlier).
    """
    box = mask.convert("L").getbbox()
    if box is None:
        raise InvalidRequest(EMPTY_MASK_MESSAGE)
    x1, y1, x2, y2 = box
    padding = max(int(padding), 0)
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def expand_region(region: Region, target_w: int, target_h: int, image_w: int, image_h: int) -> Region:
    """Grow `region` along one axis to the target's aspect ratio, as A1111's expand_crop_region.

    Only the axis that is too short grows, split evenly (the odd pixel goes to the far side). A region
    pushed past the image edge slides back inside; one that would need more than the whole image is
    clamped to the image along that axis, and then its ratio is not the target's (`crop_to_target`
    fills the difference, `paste_back` cuts it off again). The result always contains `region`.
    """
    x1, y1, x2, y2 = region
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"region {region} has no area")
    target_ratio = target_w / target_h
    if (x2 - x1) / (y2 - y1) > target_ratio:
        y1, y2 = _grow_axis(y1, y2, int((x2 - x1) / target_ratio - (y2 - y1)), image_h)
    else:
        x1, x2 = _grow_axis(x1, x2, int((y2 - y1) * target_ratio - (x2 - x1)), image_w)
    return x1, y1, x2, y2


def _grow_axis(start: int, end: int, grow: int, limit: int) -> tuple[int, int]:
    """Add `grow` pixels around [start, end), then slide (and if need be clamp) into [0, limit)."""
    start, end = start - grow // 2, end + grow - grow // 2
    if end > limit:
        start, end = start - (end - limit), limit
    if start < 0:
        start, end = 0, end - start
    return start, min(end, limit)


def face_crop_region(bbox: tuple[float, float, float, float], image_w: int, image_h: int,
                     padding_ratio: float, target_size: int | tuple[int, int]) -> Region:
    """A region around a detected face box for the face detailer: padded, at the target's aspect, inside the image.

    The face's longer side grows by `padding_ratio` of itself on each side (some hair, chin and
    background give the model context and leave room for the feathered paste), then the shorter axis
    grows to the aspect ratio of `target_size` (an int is a square). The region is centred on the face,
    slides inside the image at an edge, always contains the whole (integer-rounded) face box, and is
    clamped to the image when it would be larger: "square-ish" near small images' borders.
    """
    target_w, target_h = (target_size, target_size) if isinstance(target_size, int) else target_size
    if target_w <= 0 or target_h <= 0:
        raise ValueError(f"target size must be positive, not {target_w}x{target_h}")
    fx1, fy1 = max(float(bbox[0]), 0.0), max(float(bbox[1]), 0.0)
    fx2, fy2 = min(float(bbox[2]), float(image_w)), min(float(bbox[3]), float(image_h))
    if fx2 <= fx1 or fy2 <= fy1:
        raise ValueError(f"face box {tuple(bbox)} does not overlap the {image_w}x{image_h} image")
    side = max(fx2 - fx1, fy2 - fy1) * (1.0 + 2.0 * max(float(padding_ratio), 0.0))
    width, height = side, side
    if target_w / target_h > 1.0:
        width = side * target_w / target_h
    else:
        height = side * target_h / target_w
    x1, x2 = _place_axis(fx1, fx2, width, image_w)
    y1, y2 = _place_axis(fy1, fy2, height, image_h)
    return x1, y1, x2, y2


def _place_axis(face_start: float, face_end: float, length: float, limit: int) -> tuple[int, int]:
    """An integer span of about `length` centred on the face span, covering it, inside [0, limit)."""
    lo, hi = math.floor(face_start), math.ceil(face_end)
    size = min(max(math.ceil(length), hi - lo), limit)
    start = math.floor((face_start + face_end) / 2 - size / 2)
    start = min(max(start, hi - size), lo)  # cover the face even after rounding
    start = min(max(start, 0), limit - size)  # stay inside the image
    return start, start + size


def region_inside(region: Region, image_w: int, image_h: int) -> bool:
    """True when `region` has an area and lies inside an image_w x image_h image (for asserts and tests)."""
    x1, y1, x2, y2 = region
    return 0 <= x1 < x2 <= image_w and 0 <= y1 < y2 <= image_h

