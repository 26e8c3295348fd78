"""img2img and inpainting: the init image (and mask) prepared as A1111 does, encoded under the VAE
precision policy ("img encode"), the denoise from it, and the paste back into the original picture.

The denoise runs diffusers' own img2img / inpaint pipelines made with `from_pipe` from the loaded
pipeline: they share its modules, so every hook (LoRA, PuLID, DeepCache, block caches) that is
attached to the UNet or transformer applies unchanged. The init latents are ours (the pipelines
accept latents as the image), so the encode follows the same dtype policy as the decode.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from pipelines.families import Family
from pipelines.refine import (
    crop_region, crop_to_target, expand_region, fill_for_content, flatten_image, latent_mask, masked_latent, overlay_mask,
    paste_back, prepare_mask, resize_image,
)
from pipelines.request import image_digest
from pipelines.vae import encode


@dataclass
class InitImage:
    """What the init-image stage hands the denoise and the paste back."""

    latents: torch.Tensor  # (1, C, h, w) in the pipeline's convention (scaled, shifted; FLUX unpacked)
    image: Image.Image  # the init image at the generation size (after resize / crop), unfilled
    original: Image.Image  # the flattened init image at its own size (pasted into for "only masked")
    mask: Image.Image | None = None  # L, generation size: what the sampler repaints
    overlay: Image.Image | None = None  # L: the mask the result is pasted back with
    region: tuple | None = None  # "only masked": where the generation size crop sits in `original`
    masked_latents: torch.Tensor | None = None  # 9-channel inpainting UNets: the masked image, encoded
    key: tuple = ()  # everything about the init image and mask that changes the result (exact-repeat cache)


def is_inpainting_model(model) -> bool:
    """A 9-channel UNet (latents + mask + masked image): an inpainting checkpoint."""
    unet = getattr(model.pipe, "unet", None)
    return unet is not None and unet.config.in_channels == 9


def encode_pixels(model, image: Image.Image, vae_settings) -> tuple[torch.Tensor, object]:
    """PIL image -> latents in the pipeline's convention, with the VAE precision policy; (latents, outcome)."""
    autoencoder = model.pipe.vae
    choice = vae_settings.choose(model.device, autoencoder)
    pixels = model.pipe.image_processor.preprocess(image)
    outcome = encode(autoencoder, pixels, choice.dtype, model.device, tiled=vae_settings.tiling, substituted_because=choice.substituted_because)
    config = autoencoder.config
    latents = outcome.latents
    if getattr(config, "shift_factor", None):
        latents = latents - config.shift_factor
    return (latents * config.scaling_factor).to(model.device), outcome


class ImgEncode:
    name = "img encode"

    def wanted(self, plan) -> bool:
        return plan.request.init_image is not None

    def run(self, plan, state, info: dict) -> None:
        request, model = plan.request, plan.model
        width, height = request.width, request.height
        original = flatten_image(request.init_image)
        mask = overlay = region = None
        if request.mask is None:
            image = start = resize_image(original, request.resize_mode, width, height)
        else:
            full_mask = prepare_mask(request.mask, *original.size, request.mask_blur, request.mask_blur, invert=request.inpainting_mask_invert)
            if request.inpaint_full_res:
                region = expand_region(crop_region(full_mask, request.inpaint_full_res_padding), width, height, *original.size)
                image, mask = crop_to_target(original, region, width, height), crop_to_target(full_mask, region, width, height)
                overlay = full_mask
            else:
                image, mask = resize_image(original, request.resize_mode, width, height), resize_image(full_mask, request.resize_mode, width, height)
                overlay = overlay_mask(mask)
            start = fill_for_content(image, mask, request.inpainting_fill)
        latents, outcome = encode_pixels(model, start, plan.options.vae)
        masked_latents = None
        if mask is not None:
            scale = model.pipe.vae_scale_factor
            nmask = latent_mask(mask, height // scale, width // scale).to(latents.device, latents.dtype)
            noise = torch.randn(latents.shape, generator=torch.Generator("cpu").manual_seed(plan.validated.seed)).to(latents.device, latents.dtype)
            latents = masked_latent(latents, nmask, request.inpainting_fill, noise)
            if is_inpainting_model(model):  # the UNet also sees the picture with the masked part blanked
                keep = Image.composite(Image.new("RGB", image.size, (0, 0, 0)), image, mask.point(lambda v: 255 if v >= 128 else 0))
                masked_latents, _ = encode_pixels(model, keep, plan.options.vae)
        for note in outcome.notes:
            state.warn(plan.bus, note)
        info["detail"] = f"{request.mode}, VAE {outcome.label()}" + (", only masked" if region else "")
        key = (request.mode, image_digest(request.init_image), image_digest(request.mask), float(request.denoising_strength), request.resize_mode,
               request.mask_blur, request.inpainting_fill, request.inpaint_full_res, request.inpaint_full_res_padding, request.inpainting_mask_invert)
        state.init = InitImage(latents, image, original, mask, overlay, region, masked_latents, key)
        plan.options.infotext_extra.update(refine_infotext(request))


def refine_infotext(request) -> dict:
    """The img2img / inpaint keys A1111 writes in the infotext (and its PNG Info reads back)."""
    extra = {"Denoising strength": f"{request.denoising_strength:g}"}
    if request.mask is not None:
        extra["Mask blur"] = request.mask_blur
        if request.inpainting_mask_invert:
            extra["Mask mode"] = "Inpaint not masked"
        extra["Masked content"] = request.inpainting_fill
        if request.inpaint_full_res:
            extra.update({"Inpaint area": "Only masked", "Masked area padding": request.inpaint_full_res_padding})
    return extra


def denoise_steps(request) -> int:
    """Steps an img2img / inpaint denoise really runs: A1111's and diffusers' `int(steps * strength)`."""
    return min(int(request.steps * request.denoising_strength), request.steps)


def refine_pipeline(model, inpaint: bool):
    """diffusers' img2img or inpaint pipeline on the loaded pipeline's modules (nothing is copied)."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    maker = AutoPipelineForInpainting if inpaint else AutoPipelineForImage2Image
    pipe = maker.from_pipe(model.pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def packed(model, latents: torch.Tensor) -> torch.Tensor:
    """FLUX's denoiser latents are 2x2 patches in a sequence; the decode stage unpacks them."""
    if model.family is not Family.FLUX:
        return latents
    batch, channels, height, width = latents.shape
    return model.pipe._pack_latents(latents, batch, channels, height, width)


def paste_into_original(state) -> None:
    """Inpainting: the generated pixels only where the mask says, the original everywhere else."""
    init = state.init
    state.decoded = [paste_back(init.original if init.region else init.image, image, init.region, init.overlay) for image in state.decoded]


class PasteBack:
    name = "paste back"

    def wanted(self, plan) -> bool:
        return plan.request.mask is not None

    def run(self, plan, state, info: dict) -> None:
        paste_into_original(state)
        info["detail"] = "only masked" if state.init.region else "whole picture"
