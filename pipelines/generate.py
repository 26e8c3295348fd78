"""What every generation stage shares: the loaded model, the family adapters, the run's options.

Text encoding, denoising and VAE decoding run as separate calls (the pipeline is asked for latents)
so each stage has its own synchronized timer; the stages themselves live in `pipelines.stages`.
Family differences live in the small adapters below.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from pipelines.caches.memo import MemoCache
from pipelines.errors import OutputError
from pipelines.families import Family
from pipelines.outputs import save_image
from pipelines.prompts.encode import encode_weighted
from pipelines.prompts.syntax import flux_text
from pipelines.request import GeneratedImage
from pipelines.samplers import find_sampler
from pipelines.vae import STICKY_FALLBACK_WHY, DecodeOutcome, VaeChoice, decode, resolve_vae_dtype

APP_VERSION = "Likeness 0.1.0"


class CancelToken:
    """Set from another thread (Stop / Skip buttons); the denoise loop checks it every step.

    Stop ends the whole run; Skip ends the current batch only and goes on with the next one.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._skip = threading.Event()

    def cancel(self) -> None:
        self._stop.set()

    def skip(self) -> None:
        self._skip.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    @property
    def interrupt_requested(self) -> bool:
        return self._stop.is_set() or self._skip.is_set()

    def take_skip(self) -> bool:
        """True once per Skip press: the batch that saw it is the one skipped."""
        if self._skip.is_set():
            self._skip.clear()
            return True
        return False


@dataclass
class LoadedModel:
    """What a generation needs from the manager: the pipeline and facts about it."""

    name: str
    family: Family
    pipe: object
    base_scheduler_config: dict
    dtype: torch.dtype
    device: torch.device
    model_hash: str | None = None
    adapters: tuple = ()  # the LoRA set applied for this run (LoraHook.cache_key()): names, file hashes, weights
    vae: tuple = ()  # an external VAE swapped in for this run (A1111's SD VAE): (file name, A1111's 10-digit hash)

    @property
    def identity(self) -> tuple:
        """What distinguishes this model's outputs, for cache keys: the name and the file hash, and the
        LoRAs applied (they change the weights, text encoders included, so every cache keys on them)."""
        base = (self.name, self.model_hash, str(self.dtype))
        return base + (("loras", self.adapters),) if self.adapters else base


# -- family adapters: prompt encoding and latent unpacking ------------------------------------------


def encode_prompts(model: LoadedModel, prompt: str, negative: str, batch_size: int, use_cfg: bool, embeddings: list = (),
                   clip_skip: int = 1) -> dict:
    """Return the pipeline keyword arguments that carry the encoded prompt for `batch_size` images."""
    pipe, device = model.pipe, model.device
    if model.family in (Family.SD15, Family.SDXL):  # A1111's syntax, 75-token chunks, emphasis, textual inversions
        return encode_weighted(pipe, prompt, negative, device, batch_size, use_cfg, sdxl=model.family is Family.SDXL, embeddings=embeddings,
                               clip_skip=clip_skip)
    (prompt, _), (negative, _) = flux_text(prompt), flux_text(negative)  # T5 has no weights: the words only
    with torch.no_grad():
        positive, pooled, _text_ids = pipe.encode_prompt(prompt, device=device, num_images_per_prompt=batch_size)
        embeds = {"prompt_embeds": positive, "pooled_prompt_embeds": pooled}
        if use_cfg:  # FLUX true CFG: the negative prompt gets its own transformer pass
            negative_embeds, negative_pooled, _ = pipe.encode_prompt(negative, device=device, num_images_per_prompt=batch_size)
            embeds |= {"negative_prompt_embeds": negative_embeds, "negative_pooled_prompt_embeds": negative_pooled}
        return embeds


def spatial_latents(model: LoadedModel, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """FLUX keeps latents packed as 2x2 patches in a sequence; everything else is already (B,C,H,W)."""
    if model.family is Family.FLUX:
        return model.pipe._unpack_latents(latents, height, width, model.pipe.vae_scale_factor)
    return latents


def prompt_token_warnings(model: LoadedModel, prompt: str, negative: str) -> list[str]:
    tokenizer = getattr(model.pipe, "tokenizer", None)
    if tokenizer is None or model.family is not Family.FLUX:  # SD 1.5 / SDXL read long prompts in chunks
        return []
    limit = tokenizer.model_max_length
    warnings = []
    for label, text in (("prompt", flux_text(prompt)[0]), ("negative prompt", flux_text(negative)[0])):
        count = len(tokenizer(text, truncation=False).input_ids) if text else 0
        if count > limit:
            warnings.append(f"The {label} is {count} tokens; the CLIP text encoder reads {limit} (incl. start/end), the rest is ignored.")
    return warnings


# -- preview and decode -----------------------------------------------------------------------------


def latent_preview(model: LoadedModel, latents: torch.Tensor, height: int, width: int) -> Image.Image:
    """A1111's "Approx cheap": a fixed linear map from latent channels to RGB, first image of the batch."""
    spatial = spatial_latents(model, latents, height, width)[0].float().cpu()
    weights = torch.tensor(model.family.spec.preview_rgb, dtype=torch.float32)
    if spatial.shape[0] != weights.shape[0]:
        weights = torch.zeros(spatial.shape[0], 3)
    rgb = torch.einsum("chw,cr->hwr", spatial, weights)
    array = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def vae_input(model: LoadedModel, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Denoiser latents -> what the VAE decoder takes (unpacked, unscaled, shifted)."""
    config = model.pipe.vae.config
    spatial = spatial_latents(model, latents, height, width) / config.scaling_factor
    if getattr(config, "shift_factor", None):
        spatial = spatial + config.shift_factor
    return spatial


def decode_latents(model: LoadedModel, latents: torch.Tensor, height: int, width: int, vae: VaeSettings) -> tuple[list[Image.Image], DecodeOutcome]:
    """Decode with the VAE under the dtype policy; the outcome says what really ran."""
    autoencoder = model.pipe.vae
    choice = vae.choose(model.device, autoencoder)
    autoencoder.use_slicing = vae.slicing
    outcome = decode(autoencoder, vae_input(model, latents, height, width), choice.dtype, model.device, tiled=vae.tiling,
                     substituted_because=choice.substituted_because)
    images = model.pipe.image_processor.postprocess(outcome.images, output_type="pil")
    return images, outcome


# -- the generation ---------------------------------------------------------------------------------


@dataclass
class VaeSettings:
    """How to decode, for one generation: the requested dtype plus the session's VAE options."""

    requested: str = "auto"  # auto | bf16 | fp16 | fp32
    tiling: bool = False
    slicing: bool = False
    honour_force_upcast: bool = True
    forced_fp32: bool = False  # a sticky NaN fallback happened earlier in this session

    def choose(self, device: torch.device, autoencoder) -> VaeChoice:
        force_upcast = bool(getattr(autoencoder.config, "force_upcast", False))
        choice = resolve_vae_dtype(self.requested, device, force_upcast, self.honour_force_upcast)
        if self.forced_fp32 and choice.dtype != torch.float32:
            return VaeChoice(torch.float32, "fp32: kept after an earlier NaN fallback in this session", STICKY_FALLBACK_WHY)
        return choice


@dataclass
class RunOptions:
    outputs_dir: str | None
    preview_every: int = 0  # 0 = no preview
    live_preview: object | None = None  # pipelines.preview.live.LivePreview (cheap or TAESD); None: cheap
    synchronize_steps: bool = True
    cancel: CancelToken = field(default_factory=CancelToken)
    vae: VaeSettings = field(default_factory=VaeSettings)
    hooks: list = field(default_factory=list)  # GenerationHook instances, attached for this run only
    prompt_memo: MemoCache | None = None  # encoded prompts, keyed as A1111 keys its conditioning cache
    latent_cache: MemoCache | None = None  # final latents of exact repeats: skip the denoise, decode only
    approximate_cache: object | None = None  # ApproximateCache: similar prompts resume from kept latents (inexact)
    infotext_extra: dict = field(default_factory=dict)  # keys a hook adds to the metadata (PuLID weight, ...)
    true_cfg_scale: float = 1.0  # FLUX only (PuLID-FLUX's control): > 1 adds a negative-prompt pass per step
    embeddings: object | None = None  # EmbeddingLibrary: textual inversions named in the prompt (SD 1.5 / SDXL)
    # pass name ("hires", "face detail") -> pipelines.hooks.lora.PassLoras: that pass's prompt's own LoRA set, swapped in for it
    pass_loras: dict = field(default_factory=dict)


@dataclass
class RunOutput:
    images: list[GeneratedImage]
    step_seconds: list[float]
    warnings: list[str]
    vae_label: str  # e.g. "bf16", "fp32 (fallback from fp16)", "fp32, tiled"
    fell_back: bool  # some sample needed the fp32 re-decode
    last_latents: torch.Tensor | None  # the final latents of the last batch, on the CPU, for re-decoding
    hook_stats: dict = field(default_factory=dict)
    cache_notes: dict = field(default_factory=dict)  # cache name -> "hit" / "miss" for this run
    latent_size: tuple[int, int] = (0, 0)  # (width, height) the last latents decode to (a hires pass changes it)


def uses_true_cfg(model: LoadedModel, options: RunOptions) -> bool:
    """FLUX true CFG: a negative-prompt transformer pass per step (PuLID-FLUX's control)."""
    return model.family is Family.FLUX and options.true_cfg_scale > 1


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def save_batch(batch: list[GeneratedImage], outputs_dir: str, warn) -> None:
    """Save each image; an unwritable folder costs the file, never the image (it stays in the result)."""
    for item in batch:
        try:
            item.path = str(save_image(item.image, item.infotext, outputs_dir, item.seed))
        except OutputError as error:
            warn(str(error))


def infotext_params(model: LoadedModel, request, seed: int, vae_label: str, stage_seconds: dict, cache_notes: dict | None = None,
                    subseed: int | None = None) -> dict:
    """A1111's keys first (in its order), then Likeness's own; `subseed`: this image's variation seed, if any."""
    sampler_name, schedule = find_sampler(model.family, request.sampler).infotext(request.schedule_type)
    stages = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in stage_seconds.items() if name != "save")
    return {
        "Steps": request.steps,
        "Sampler": sampler_name,
        "Schedule type": schedule,
        "CFG scale": f"{request.cfg_scale:g}",
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model.model_hash,
        "Model": model.name,
        "VAE hash": model.vae[1] if model.vae else None,  # A1111's keys for its SD VAE, only with an external one
        "VAE": model.vae[0] if model.vae else None,
        "Variation seed": subseed,
        "Variation seed strength": f"{request.subseed_strength:g}" if subseed is not None else None,
        # A1111's key, only when on
        "Seed resize from": f"{request.seed_resize_from_w}x{request.seed_resize_from_h}" if request.seed_resize_from_w > 0 else None,
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,  # A1111 writes it only when it is not 1
        "Tiling": True if request.tiling else None,  # A1111's key and spelling, only when on
        "Token merging ratio": f"{request.token_merging_ratio:g}" if request.token_merging_ratio > 0 else None,  # A1111's, only when on
        "Version": APP_VERSION,
        "VAE dtype": vae_label,
        "Denoiser dtype": dtype_name(model.dtype),
        "Stage times": stages,
        "Caches": ", ".join(f"{name} {note}" for name, note in (cache_notes or {}).items()) or None,
    }
