"""VAE precision and decoding: the dtype policy, NaN re-decode in fp32, tiled decode on out-of-memory.

Policy "auto" follows reForge's rule: bf16 on an NVIDIA GPU of compute capability 8 or more (half
the memory of fp32, the same exponent range, so no overflow), fp32 everywhere else. fp16 is never
chosen automatically: the SD/SDXL VAEs overflow in fp16 and decode black images.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pipelines import devices
from pipelines.choices import VAE_CHOICES

VAE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Forge's tile: 64x64 latents (512 px) with a quarter of overlap.
TILE_LATENT = 64


# Why a dtype the user asked for was not the one that ran: the readout and infotext say it after the dtype.
FORCE_UPCAST_WHY = "this VAE overflows in fp16 (force_upcast)"
STICKY_FALLBACK_WHY = "kept after a NaN fallback earlier this session"


@dataclass(frozen=True)
class VaeChoice:
    dtype: torch.dtype
    reason: str
    substituted_because: str = ""  # set when the dtype asked for was replaced; "" when honoured (or "auto")
    short: str = ""  # "auto"'s choice in a few words, for a form hint: "fp32 on this CPU"

    @property
    def name(self) -> str:
        return dtype_label(self.dtype)


def dtype_label(dtype: torch.dtype) -> str:
    return {v: k for k, v in VAE_DTYPES.items()}.get(dtype, str(dtype))


def resolve_vae_dtype(requested: str, device: torch.device, force_upcast: bool = False, honour_force_upcast: bool = True) -> VaeChoice:
    """The dtype to decode in, and why (shown in the start-up log, the status bar and the readout)."""
    if requested not in VAE_CHOICES:
        raise ValueError(f"VAE dtype must be one of {', '.join(VAE_CHOICES)}, got {requested!r}")
    if requested == "auto":
        capability = devices.cuda_capability(device)
        if capability is None:
            return VaeChoice(torch.float32, f"auto: fp32 on {device.type} (bf16 is only fast on NVIDIA GPUs of compute capability 8+)",
                             short=f"fp32 on this {device.type.upper()}")
        if devices.is_amd(device):
            return VaeChoice(torch.float32, "auto: fp32 on an AMD GPU (bf16 VAE decode is unreliable there)", short="fp32 on this AMD GPU")
        version = f"{capability[0]}.{capability[1]}"
        if capability >= (8, 0):
            return VaeChoice(torch.bfloat16, f"auto: bf16 (compute capability {version} supports it)", short="bf16 on this GPU")
        return VaeChoice(torch.float32, f"auto: fp32 (compute capability {version} has no fast bf16)", short="fp32 on this GPU (no fast bf16)")
    dtype = VAE_DTYPES[requested]
    if dtype == torch.float16 and force_upcast and honour_force_upcast:
        return VaeChoice(torch.float32, "fp32: this VAE's config sets force_upcast (it overflows in fp16); turn off 'honour force_upcast' to run fp16 anyway",
                         FORCE_UPCAST_WHY)
    return VaeChoice(dtype, f"{requested}: as chosen")


def outcome_label(dtype: torch.dtype, fell_back: bool, tiled: bool, substituted_because: str) -> str:
    """Readout and infotext wording: 'bf16', 'fp32 (fallback from fp16)', 'fp32, tiled',
    'fp32: this VAE overflows in fp16 (force_upcast)' (the dtype asked for was replaced, and why)."""
    text = f"fp32 (fallback from {dtype_label(dtype)})" if fell_back else dtype_label(dtype)
    text += ", tiled" if tiled else ""
    return f"{text}: {substituted_because}" if substituted_because and not fell_back else text


@dataclass
class DecodeOutcome:
    images: torch.Tensor  # float32, (B, 3, H, W) in [-1, 1]
    dtype: torch.dtype  # what most samples were decoded in
    fallback_samples: list[int] = field(default_factory=list)  # re-decoded in fp32 after NaN/Inf
    tiled: bool = False
    notes: list[str] = field(default_factory=list)
    substituted_because: str = ""  # the dtype asked for was replaced by `dtype`, and why (VaeChoice)

    def label(self) -> str:
        """Readout wording for the batch, e.g. 'fp32 (fallback from fp16)' or 'bf16, tiled'."""
        return outcome_label(self.dtype, bool(self.fallback_samples), self.tiled, self.substituted_because)

    def sample_label(self, index: int) -> str:
        """Infotext wording for one sample: only the re-decoded ones say 'fallback'."""
        return outcome_label(self.dtype, index in self.fallback_samples, self.tiled, self.substituted_because)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def _tiles_on_out_of_memory(run, tiled: bool, device: torch.device, notes: list[str], what: str):
    """`run(tiled)`; on out-of-memory without tiles, free the cache and run again in tiles. (result, tiled)."""
    try:
        return run(tiled), tiled
    except Exception as error:
        if tiled or not is_out_of_memory(error):
            raise
        devices.free_device_memory(device)
        notes.append(f"Ran out of memory during VAE {what}; retried with tiled {what[:-1]}ing.")
        return run(True), True


def _decode_once(vae, latents: torch.Tensor, tiled: bool) -> torch.Tensor:
    with torch.no_grad():
        if not tiled:
            return vae.decode(latents, return_dict=False)[0]
        return tiled_decode(vae, latents)


def tiled_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Decode in overlapping tiles, at least 2x2 of them (a single tile would be no saving)."""
    tile = min(TILE_LATENT, max(8, (max(latents.shape[-2:]) + 1) // 2))
    saved = (vae.tile_latent_min_size, vae.tile_sample_min_size)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.tile_latent_min_size, vae.tile_sample_min_size = tile, tile * scale
    try:
        return vae.tiled_decode(latents, return_dict=False)[0]
    finally:
        vae.tile_latent_min_size, vae.tile_sample_min_size = saved


def decode(vae, latents: torch.Tensor, dtype: torch.dtype, device: torch.device, tiled: bool = False, nan_check: bool = True,
           substituted_because: str = "") -> DecodeOutcome:
    """Decode `latents` (already scaled for the VAE) in `dtype`; fall back per sample and on OOM.
    `substituted_because`: why `dtype` is not the one asked for (the label says it).

    The VAE is cast in place, so switching dtype between generations never keeps two copies.
    """
    vae.to(dtype=dtype)
    notes: list[str] = []
    if device.type == "cpu" and dtype == torch.float16:
        notes.append("fp16 VAE decoding on the CPU has no fast kernels and can take minutes for a full-size VAE; fp32 or bf16 is faster here.")
    z = latents.to(device=device, dtype=dtype)
    decoded, tiled = _tiles_on_out_of_memory(lambda tiles: _decode_once(vae, z, tiles), tiled, device, notes, "decode")
    decoded = decoded.float()
    outcome = DecodeOutcome(decoded, dtype, tiled=tiled, notes=notes, substituted_because=substituted_because)
    if nan_check and dtype != torch.float32:
        bad = [i for i in range(decoded.shape[0]) if not torch.isfinite(decoded[i]).all()]
        if bad:
            vae.to(dtype=torch.float32)
            for index in bad:
                decoded[index] = _decode_once(vae, latents[index : index + 1].to(device=device, dtype=torch.float32), tiled)[0].float()
            outcome.fallback_samples = bad
            samples = ", ".join(str(i + 1) for i in bad)
            notes.append(f"The {dtype_label(dtype)} VAE decode gave NaN/Inf for sample {samples}; re-decoded in fp32.")
    return outcome


@dataclass
class EncodeOutcome:
    latents: torch.Tensor  # float32, (B, C, h, w): the latent distribution's mean, not yet scaled or shifted
    dtype: torch.dtype
    fell_back: bool = False  # re-encoded in fp32 after NaN/Inf
    tiled: bool = False
    notes: list[str] = field(default_factory=list)
    substituted_because: str = ""

    def label(self) -> str:
        return outcome_label(self.dtype, self.fell_back, self.tiled, self.substituted_because)


def _encode_once(vae, pixels: torch.Tensor, tiled: bool) -> torch.Tensor:
    with torch.no_grad():
        if not tiled:
            # The mean, not a sample: img2img then starts from the image itself, and strength 0 gives it back.
            return vae.encode(pixels).latent_dist.mode()
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        tile = min(TILE_LATENT, max(8, (max(pixels.shape[-2:]) // scale + 1) // 2))
        saved = (vae.use_tiling, vae.tile_latent_min_size, vae.tile_sample_min_size)
        vae.use_tiling, vae.tile_latent_min_size, vae.tile_sample_min_size = True, tile, tile * scale
        try:
            return vae.encode(pixels).latent_dist.mode()
        finally:
            vae.use_tiling, vae.tile_latent_min_size, vae.tile_sample_min_size = saved


def encode(vae, pixels: torch.Tensor, dtype: torch.dtype, device: torch.device, tiled: bool = False,
           substituted_because: str = "") -> EncodeOutcome:
    """Encode `pixels` ((B, 3, H, W) in [-1, 1]) under the same policy as `decode`: the chosen dtype, a
    re-encode in fp32 when it gives NaN/Inf, tiles when the whole image runs out of memory."""
    vae.to(dtype=dtype)
    notes: list[str] = []
    x = pixels.to(device=device, dtype=dtype)
    latents, tiled = _tiles_on_out_of_memory(lambda tiles: _encode_once(vae, x, tiles), tiled, device, notes, "encode")
    outcome = EncodeOutcome(latents.float(), dtype, tiled=tiled, notes=notes, substituted_because=substituted_because)
    if dtype != torch.float32 and not torch.isfinite(outcome.latents).all():
        vae.to(dtype=torch.float32)
        outcome.latents = _encode_once(vae, pixels.to(device=device, dtype=torch.float32), tiled).float()
        outcome.fell_back = True
        notes.append(f"The {dtype_label(dtype)} VAE encode gave NaN/Inf; re-encoded in fp32.")
    return outcome
