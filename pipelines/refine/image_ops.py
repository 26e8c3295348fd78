"""Resizing an init image to the generation size, and putting a generated picture back into the original.

The three resize modes are AUTOMATIC1111's (`modules/images.py` resize_image), so an init image that
is not the generation size lands where A1111 users expect it:

    resize_image(photo, "Crop and resize", 512, 512)   # fills 512x512, cuts the overflow, keeps the centre

Pasting back is A1111's `apply_overlay`: the generated picture is blended into the original through
the (blurred) inpaint mask, so a pixel the mask does not touch keeps the original value bit for bit.
The face detailer pastes its patch with a feathered rectangle instead (no mask needed).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from pipelines.choices import RESIZE_MODES
from pipelines.errors import InvalidRequest

Region = tuple[int, int, int, int]  # (x1, y1, x2, y2): left/top inclusive, right/bottom exclusive, like PIL's crop box

JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL = RESIZE_MODES

_LANCZOS = Image.Resampling.LANCZOS
# "Resize and fill" stretches a zero-thickness strip at the picture's edge over the blank band. PIL
# samples that strip with its default filter for RGB/L, bicubic: each band line is the edge line
# slightly extrapolated outwards (1.125 x edge - 0.125 x next line), the same on every line of the band.
_EDGE_STRETCH = Image.Resampling.BICUBIC


def resize_image(image: Image.Image, mode: str, width: int, height: int) -> Image.Image:
    """Bring `image` to width x height the way A1111's img2img does (Lanczos scaling).

    "Just resize" stretches to the size, aspect ratio lost. "Crop and resize" scales until the size is
    covered, then keeps the centre. "Resize and fill" scales until the picture fits, centres it, and
    fills the two blank bands by stretching the picture's edge lines across them (A1111's choice: the
    model sees a smeared continuation, not black bars it would try to draw).

    "L" masks stay "L"; anything else becomes RGB (an RGBA picture loses its alpha, as in A1111's
    resize: call `flatten_image` first to put a transparent init image on a background).
    """
    if mode not in RESIZE_MODES:
        raise InvalidRequest(f"Unknown resize mode {mode!r}; choose one of: {', '.join(RESIZE_MODES)}.")
    if width <= 0 or height <= 0:
        raise InvalidRequest(f"Cannot resize to {width}x{height}: both sides must be at least 1 pixel.")
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # also keeps PIL from falling back to nearest-neighbour for palette images
    if mode == JUST_RESIZE:
        return _lanczos(image, width, height)

    target_ratio, source_ratio = width / height, image.width / image.height
    # Integer arithmetic as in A1111, so every size and offset matches it to the pixel.
    # Crop: the side of the target that is relatively longer is matched; fill: the shorter one. Equal
    # ratios match the height, as A1111 does.
    match_width = target_ratio > source_ratio if mode == CROP_AND_RESIZE else target_ratio < source_ratio
    scaled_w = width if match_width else image.width * height // image.height
    scaled_h = image.height * width // image.width if match_width else height
    scaled = _lanczos(image, max(scaled_w, 1), max(scaled_h, 1))  # a 1000:1 strip would scale to 0 pixels (A1111 fails there)
    canvas = Image.new(image.mode, (width, height))
    left, top = width // 2 - scaled.width // 2, height // 2 - scaled.height // 2
    canvas.paste(scaled, (left, top))  # a negative offset crops: that is "Crop and resize"
    if mode == RESIZE_AND_FILL:
        _stretch_edges(canvas, scaled, left, top)
    return canvas


def flatten_image(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """An RGB picture with any transparency laid over `background` (white by default, A1111's img2img background).

    Without this, the colours hidden under transparent pixels (often black, or leftovers of an edit)
    would be what the VAE encodes.
    """
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def _lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.copy() if image.size == (width, height) else image.resize((width, height), resample=_LANCZOS)


def _stretch_edges(canvas: Image.Image, scaled: Image.Image, left: int, top: int) -> None:
    """Fill the bands "Resize and fill" left blank with the stretched first and last line of `scaled`.

    A1111 sizes the far band like the near one, which leaves a 1-pixel black line when the blank is
    odd (an odd target side); here the far band takes whatever is left, identical to A1111 otherwise.
    """
    width, height = canvas.size
    if top > 0 or scaled.height < height:
        bottom = height - top - scaled.height
        for band, edge_y, y in ((top, 0, 0), (bottom, scaled.height, top + scaled.height)):
            if band > 0:
                canvas.paste(scaled.resize((width, band), _EDGE_STRETCH, box=(0, edge_y, width, edge_y)), (0, y))
    elif left > 0 or scaled.width < width:
        right = width - left - scaled.width
        for band, edge_x, x in ((left, 0, 0), (right, scaled.width, left + scaled.width)):
            if band > 0:
                canvas.paste(scaled.resize((band, height), _EDGE_STRETCH, box=(edge_x, 0, edge_x, height)), (x, 0))


def crop_to_target(image: Image.Image, region: Region, width: int, height: int) -> Image.Image:
    """Cut `region` out of `image` and bring it to the generation size ("only masked" inpainting, face detailer).

    A1111 uses "Resize and fill" here and "Crop and resize" on the way back (`paste_back`), so a
    region whose aspect ratio is a pixel off the target's gets thin filled bands that the paste-back
    cuts off again, instead of a distortion.
    """
    return resize_image(image.crop(region), RESIZE_AND_FILL, width, height)


def paste_back(original: Image.Image, generated: Image.Image, region: Region | None,
               mask_for_overlay: Image.Image) -> Image.Image:
    """Blend `generated` into `original` through `mask_for_overlay` (255 = generated, 0 = original), as A1111's apply_overlay.

    `region` is where an "only masked" crop came from: `generated` (at the generation size) is brought
    back to the region's size with "Crop and resize", the inverse of `crop_to_target`. With `region`
    None the whole picture was generated and `generated` covers `original` (resized the same way when
    it is not the same size).

    A pixel where the mask is 0 keeps the original value exactly, and one where it is 255 takes the
    generated value exactly: the user's untouched pixels never go through the VAE. In between, the
    blend is done in one step; A1111 goes through a premultiplied-alpha round trip that can shift a
    blended pixel by one level.
    """
    original = original.convert("RGB")
    if mask_for_overlay.size != original.size:
        raise ValueError(f"the overlay mask is {mask_for_overlay.size}, the original {original.size}: prepare the mask at the image size")
    x1, y1, x2, y2 = region if region is not None else (0, 0, original.width, original.height)
    if not (0 <= x1 < x2 <= original.width and 0 <= y1 < y2 <= original.height):
        raise ValueError(f"region {(x1, y1, x2, y2)} is not inside the {original.width}x{original.height} image")
    patch = resize_image(generated.convert("RGB"), CROP_AND_RESIZE, x2 - x1, y2 - y1)
    weight = np.asarray(mask_for_overlay.convert("L"), dtype=np.uint32)[y1:y2, x1:x2, None]
    result = np.array(original)
    base = result[y1:y2, x1:x2].astype(np.uint32)
    # Integer blend rounded to nearest: weight 0 gives base exactly, weight 255 gives the patch exactly.
    blended = (base * (255 - weight) + np.asarray(patch, dtype=np.uint32) * weight + 127) // 255
    result[y1:y2, x1:x2] = blended.astype(np.uint8)
    return Image.fromarray(result)


def feathered_mask(width: int, height: int, feather_px: float,
                   sides: tuple[bool, bool, bool, bool] = (True, True, True, True)) -> np.ndarray:
    """A (height, width) float32 weight: 1 inside, falling smoothly to exactly 0 on the outermost pixels.

    The face detailer pastes a rectangle; a hard edge would show as a seam wherever the new face's
    skin tone differs from the old one. The falloff is a smoothstep over `feather_px` pixels from each
    edge (no kink where it meets the flat inside). The feather is capped at half the shorter side so
    the centre is always fully the patch. `feather_px` 0 gives a hard rectangle. `sides` (left, top,
    right, bottom) says which edges fade; an edge that is the picture's own border has nothing to
    blend into.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"a feathered mask needs a positive size, not {width}x{height}")
    feather = min(float(feather_px), (min(width, height) - 1) / 2)
    if feather <= 0 or not any(sides):
        return np.ones((height, width), dtype=np.float32)
    xs, ys = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    left, top, right, bottom = sides
    across = np.minimum(np.where(left, xs, np.inf), np.where(right, width - 1 - xs, np.inf))
    down = np.minimum(np.where(top, ys, np.inf), np.where(bottom, height - 1 - ys, np.inf))
    t = np.clip(np.minimum.outer(down, across) / feather, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def paste_feathered(base: Image.Image, patch: Image.Image, region: Region, feather_px: float) -> Image.Image:
    """Paste `patch` over `region` of `base` with a feathered edge; no pixel outside `region` changes.

    `patch` is the detailer's output at the generation size; it is brought to the region's size with
    "Crop and resize", the inverse of `crop_to_target`. The edges fade over `feather_px` pixels
    (`feathered_mask`), except those on the picture's border.
    """
    base = base.convert("RGB")
    x1, y1, x2, y2 = region
    if not (0 <= x1 < x2 <= base.width and 0 <= y1 < y2 <= base.height):
        raise ValueError(f"region {region} is not inside the {base.width}x{base.height} image")
    fitted = np.asarray(resize_image(patch.convert("RGB"), CROP_AND_RESIZE, x2 - x1, y2 - y1), dtype=np.float32)
    # A side on the picture's own border is not faded: a face cut by the frame is new right up to it.
    sides = (x1 > 0, y1 > 0, x2 < base.width, y2 < base.height)
    weight = feathered_mask(x2 - x1, y2 - y1, feather_px, sides)[:, :, None]
    result = np.array(base)
    old = result[y1:y2, x1:x2].astype(np.float32)
    result[y1:y2, x1:x2] = np.clip(np.rint(old + (fitted - old) * weight), 0, 255).astype(np.uint8)
    return Image.fromarray(result)
