"""Inpaint masks: from what the user painted to the masks the sampler and the paste-back use.

Everything follows AUTOMATIC1111's img2img (`modules/processing.py` StableDiffusionProcessingImg2Img,
`modules/masking.py`), so a mask, a blur and a "Masked content" choice give the picture A1111 users
expect. White (255) means "repaint", black (0) "keep"; greys in between blend.

    mask = prepare_mask(painted, *image.size, blur_x=4, blur_y=4)     # L, image size, blurred
    notes = check_mask(painted, image.size)                          # InvalidRequest when nothing is painted

One mask, three uses, as in A1111: the blurred mask decides what `fill_masked` replaces before
encoding, its `latent_mask` (rounded to 0/1) says which latents the sampler may change, and the
overlay mask (`overlay_mask` when the whole picture is generated, the blurred mask itself for "only
masked") blends the result into the original.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter

from pipelines.choices import MASKED_CONTENT
from pipelines.errors import InvalidRequest

# A1111's "Masked content" choices (pipelines/choices.py):
#   fill            the masked area is replaced by a blur of its surroundings before encoding
#   original        the masked area starts from the original pixels (most faithful; needs denoise < 1)
#   latent noise    the image is filled, then the masked latents are replaced by noise
#   latent nothing  the image is filled, then the masked latents are zeroed
FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING = MASKED_CONTENT

EMPTY_MASK_MESSAGE = "The mask is empty: paint the area to change."
WHOLE_IMAGE_NOTE = "The mask covers the whole image: the whole image is repainted."

# masking.fill's passes (blur radius, times composited): wide blurs first give every masked pixel
# some nearby colour, narrow ones then bring back detail close to the mask's edge.
_FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))
# The blur works on about this many values at a time: bounded memory even for a 100-megapixel photo's mask.
_BLUR_CHUNK_VALUES = 2**20


def painted_mask(mask_image: Image.Image) -> Image.Image:
    """Read what the user painted as an L mask, 255 = repaint.

    A layer from Gradio's ImageEditor is RGBA with transparent unpainted pixels: every pixel that is
    not fully transparent counts as painted, whatever the brush colour (a stroke's soft edge included;
    the mask blur smooths it anyway). A1111 counts only alpha above 128; here a stroke of a
    low-opacity brush still masks what it covers. An RGBA image that is fully opaque, like an L or RGB mask, is
    read by its brightness, white = repaint (A1111's rule, so an exported black-and-white mask works
    whatever mode it was saved in).
    """
    if mask_image.mode in ("RGBA", "LA", "PA") or (mask_image.mode == "P" and "transparency" in mask_image.info):
        alpha = mask_image.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha.point(lambda a: 255 if a > 0 else 0)
    return mask_image.convert("L")


def mask_from_layers(layers: Sequence[Image.Image]) -> Image.Image | None:
    """The union of the painted pixels of Gradio ImageEditor layers (each read by `painted_mask`); None when there are none."""
    masks = [painted_mask(layer) for layer in layers if layer is not None]
    if not masks:
        return None
    size = masks[0].size
    union = np.zeros((size[1], size[0]), dtype=np.uint8)
    for mask in masks:
        if mask.size != size:
            mask = mask.resize(size, resample=Image.Resampling.NEAREST)
        np.maximum(union, np.asarray(mask), out=union)
    return Image.fromarray(union)


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    """A1111's mask blur: a Gaussian of standard deviation `blur_x` along rows, then `blur_y` along columns.

    The kernel is 2 * int(2.5 * sigma + 0.5) + 1 taps wide and the border is mirrored without
    repeating the edge pixel, as OpenCV's GaussianBlur that A1111 calls; the result is rounded to 8 bits
    after each axis. The blur softens the seam between repainted and kept pixels.
    """
    values = np.asarray(mask.convert("L"), dtype=np.uint8)
    for axis, sigma in ((1, blur_x), (0, blur_y)):
        if sigma > 0:
            values = _gaussian_1d(values, float(sigma), axis)
    return Image.fromarray(values)


def _gaussian_1d(values: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    radius = int(2.5 * sigma + 0.5)
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(taps**2) / (2.0 * sigma * sigma))
    kernel /= kernel.sum()
    lines = values if axis == 1 else values.T  # blur along the last axis
    length = lines.shape[1]
    # numpy's "reflect" is OpenCV's default BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba); "symmetric"
    # mirrors a single pixel onto itself, where "reflect" has nothing to reflect.
    mode = "reflect" if length > 1 else "symmetric"
    out = np.empty(lines.shape, dtype=np.uint8)
    rows_per_chunk = max(1, _BLUR_CHUNK_VALUES // (length + 2 * radius))
    for start in range(0, lines.shape[0], rows_per_chunk):
        chunk = np.pad(lines[start:start + rows_per_chunk].astype(np.float64), ((0, 0), (radius, radius)), mode=mode)
        total = np.zeros((chunk.shape[0], length), dtype=np.float64)
        for i, weight in enumerate(kernel):
            total += weight * chunk[:, i:i + length]
        out[start:start + rows_per_chunk] = np.clip(np.floor(total + 0.5), 0, 255)
    return out if axis == 1 else np.ascontiguousarray(out.T)


def prepare_mask(mask_image: Image.Image, width: int, height: int, blur_x: float, blur_y: float,
                 invert: bool = False) -> Image.Image:
    """The user's mask as an L mask of width x height (the init image's size), inverted if asked, blurred.

    A mask of another size is stretched with nearest-neighbour, so painted stays painted and nothing
    half-painted appears; the blur then softens the edge. "Inpaint not masked" (`invert`) flips the
    mask before the blur, as A1111, so the soft edge sits on the same line either way.
    """
    mask = painted_mask(mask_image)
    if mask.size != (width, height):
        mask = mask.resize((width, height), resample=Image.Resampling.NEAREST)
    if invert:
        mask = mask.point(lambda v: 255 - v)
    return blur_mask(mask, blur_x, blur_y)


def overlay_mask(mask: Image.Image) -> Image.Image:
    """The paste-back mask when the whole picture was generated: the blurred mask doubled, clipped at 255.

    A1111 does this for "Inpaint area: Whole picture": every pixel at least half inside the blur is
    fully the new picture and the soft transition stays outside the painted line. ("Only masked" pastes
    back with the blurred mask itself.)
    """
    doubled = np.minimum(np.asarray(mask.convert("L"), dtype=np.uint16) * 2, 255).astype(np.uint8)
    return Image.fromarray(doubled)


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Replace the masked area with a blur of the colours around it, as A1111's masking.fill ("Masked content: fill").

    The kept pixels (weighted by 255 - mask) are blurred with ever smaller radii and stacked, so a
    masked pixel takes the colour of its surroundings, smooth far from the edge and detailed near it;
    the last pass puts the unmasked pixels back unchanged. Blurring premultiplied colours keeps the
    masked (transparent) pixels from darkening their neighbours.
    """
    keep = mask.convert("L").point(lambda v: 255 - v)
    source = image.convert("RGB").convert("RGBA")
    source.putalpha(keep)
    premultiplied = source.convert("RGBa")
    stacked = Image.new("RGBA", image.size)
    for radius, repeats in _FILL_PASSES:
        layer = premultiplied.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            stacked.alpha_composite(layer)
    return stacked.convert("RGB")


def fill_for_content(image: Image.Image, mask: Image.Image, masked_content: str) -> Image.Image:
    """The init image as A1111 encodes it: filled for every "Masked content" choice except "original"."""
    _check_content(masked_content)
    return image.convert("RGB") if masked_content == ORIGINAL else fill_masked(image, mask)


def latent_mask(mask: Image.Image, latent_h: int, latent_w: int, round_mask: bool = True) -> torch.Tensor:
    """The mask at latent size, shape (1, 1, latent_h, latent_w), float32, 1 = the sampler repaints.

    As A1111's `nmask`: the (blurred, generation-size) mask is shrunk with bicubic filtering, scaled to
    0..1 and rounded to 0 or 1 (a latent is either kept or repainted: a half-kept latent decodes to
    mush). `round_mask=False` keeps the soft values (A1111's "soft inpainting"). The keep mask is
    `1 - latent_mask`. Broadcast it over the latent channels (4 for SD, 16 for FLUX).
    """
    small = mask.convert("L").resize((latent_w, latent_h), resample=Image.Resampling.BICUBIC)
    values = np.asarray(small, dtype=np.float32) / 255.0
    if round_mask:
        values = np.around(values)
    return torch.from_numpy(np.ascontiguousarray(values))[None, None]


def masked_latent(init_latent: torch.Tensor, nmask: torch.Tensor, masked_content: str,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    """The starting latent for "latent noise" (masked latents replaced by `noise`) and "latent nothing" (zeroed).

    "fill" and "original" start from the encoded (filled or original) image unchanged. `noise` is the
    seeded noise of the run, so a seed gives the same picture again.
    """
    _check_content(masked_content)
    nmask = nmask.to(device=init_latent.device, dtype=init_latent.dtype)
    if masked_content == LATENT_NOISE:
        if noise is None:
            raise ValueError('"latent noise" needs the seeded noise tensor')
        return init_latent * (1 - nmask) + noise.to(init_latent) * nmask
    if masked_content == LATENT_NOTHING:
        return init_latent * (1 - nmask)
    return init_latent


def blend_latents(denoised: torch.Tensor, init_latent: torch.Tensor, nmask: torch.Tensor) -> torch.Tensor:
    """Keep the original latents outside the mask: what A1111 applies to the denoised latent at each step and at the end."""
    nmask = nmask.to(device=denoised.device, dtype=denoised.dtype)
    return init_latent.to(denoised) * (1 - nmask) + denoised * nmask


def check_mask(mask_image: Image.Image | None, image_size: tuple[int, int] | None = None,
               invert: bool = False) -> tuple[str, ...]:
    """Check the painted mask before any work: InvalidRequest when it repaints nothing, notes for the user otherwise.

    An empty mask would run a whole generation and return the original; it is refused with
    EMPTY_MASK_MESSAGE. A mask that covers everything is allowed (it is plain img2img) with
    WHOLE_IMAGE_NOTE. A mask of another size than the image gets a note that it was stretched.
    `invert` is "Inpaint not masked": the unpainted area is repainted. No mask at all (None: the
    editor had no layer) is an empty mask.
    """
    if mask_image is None:
        raise InvalidRequest(EMPTY_MASK_MESSAGE)
    mask = painted_mask(mask_image)
    low, high = mask.getextrema()
    if invert:
        low, high = 255 - high, 255 - low
    if high == 0:
        raise InvalidRequest(EMPTY_MASK_MESSAGE)
    notes = []
    if image_size is not None and mask.size != tuple(image_size):
        notes.append(f"The mask is {mask.width}x{mask.height} and the image {image_size[0]}x{image_size[1]}: "
                     "the mask was stretched to the image size.")
    if low == 255:
        notes.append(WHOLE_IMAGE_NOTE)
    return tuple(notes)


def _check_content(masked_content: str) -> None:
    if masked_content not in MASKED_CONTENT:
        raise InvalidRequest(f"Unknown masked content {masked_content!r}; choose one of: {', '.join(MASKED_CONTENT)}.")
