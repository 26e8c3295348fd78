"""Live preview cost per call: the cheap latent-to-RGB map against a TAESD decode (a section of `bench --suite core`).

Each row times `pipelines.preview.live.render_preview`, the function the denoise callback calls,
on one image's latents: with no choice (the cheap map) and with "TAESD" reading a full-size tiny
autoencoder (TAESD / TAESDXL / TAEF1 architecture, 1.2 M parameters, random weights: the cost does
not depend on the values) from a temporary `models/VAE-approx/` in diffusers' folder layout. The
decoder loads on the first call (not timed); the medians are per call after it. The rows use the
latent sizes the tiny test models generate at, then 64x64 latents (a 512 px image).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from pipelines.bench.tables import median, ratio, seconds, table
from pipelines.families import Family

TITLE = "Live preview per call: cheap map vs TAESD (full-size tiny autoencoder, random weights)"
# (label, family, image size): the tiny models' sizes (tests/tiny_models.py), then 512 px.
ROWS = (("tiny SD 1.5 size", Family.SD15, 64), ("tiny SDXL size", Family.SDXL, 256), ("tiny FLUX.1 size", Family.FLUX, 256),
        ("SD 1.5 at 512 px", Family.SD15, 512), ("FLUX.1 at 512 px", Family.FLUX, 512))


def _model(family: Family, device: torch.device, dtype: torch.dtype):
    """What the preview reads from a loaded model: the family, device and dtype, and FLUX's unpacking."""
    from diffusers import FluxPipeline

    from pipelines.generate import LoadedModel

    pipe = SimpleNamespace(_unpack_latents=FluxPipeline._unpack_latents, vae_scale_factor=8)
    return LoadedModel("bench", family, pipe, {}, dtype, device)


def _latents(family: Family, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    from diffusers import FluxPipeline

    side, channels = size // 8, family.spec.latent_channels
    latents = torch.randn(1, channels, side, side, generator=torch.Generator().manual_seed(0))
    if family is Family.FLUX:  # the denoiser holds them packed as 2x2 patches
        latents = FluxPipeline._pack_latents(latents, 1, channels, side, side)
    return latents.to(device=device, dtype=dtype)


def _per_call(action, repeats: int, device: torch.device) -> float:
    from pipelines import devices

    times = []
    for _ in range(repeats):
        devices.synchronize(device)
        start = time.perf_counter()
        action()
        devices.synchronize(device)
        times.append(time.perf_counter() - start)
    return median(times)


def measure(device: torch.device, quick: bool = False) -> dict:
    """Median seconds per preview call, cheap and TAESD, per row of ROWS."""
    from diffusers import AutoencoderTiny

    from pipelines.preview.live import LivePreview, TinyDecoders, render_preview

    dtype = torch.float16 if device.type == "cuda" else torch.float32  # the denoiser's dtype there
    repeats = 3 if quick else 10
    workdir = Path(tempfile.mkdtemp(prefix="likeness-bench-preview-"))
    rows = []
    try:
        for family in Family:
            torch.manual_seed(0)
            AutoencoderTiny(latent_channels=family.spec.latent_channels).save_pretrained(workdir / "VAE-approx" / family.spec.tiny_autoencoder)
        preview = LivePreview("TAESD", workdir, False, TinyDecoders())
        for label, family, size in ROWS:
            model, latents = _model(family, device, dtype), _latents(family, size, device, dtype)
            first = render_preview(preview, model, latents, size, size)  # loads the decoder
            if first.size != (size, size):
                raise RuntimeError(f"the TAESD preview for {label} is {first.size}, not {size}x{size}")
            cheap = _per_call(lambda: render_preview(None, model, latents, size, size), repeats, device)
            tiny = _per_call(lambda: render_preview(preview, model, latents, size, size), repeats, device)
            rows.append({"label": label, "family": family.value, "image": size, "latent": size // 8, "cheap_seconds": cheap,
                         "taesd_seconds": tiny, "ratio": tiny / cheap, "decoder": family.spec.tiny_autoencoder.upper()})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "repeats": repeats, "threads": torch.get_num_threads(), "rows": rows}


def report(data: dict) -> list[str]:
    rows = [[r["label"], r["decoder"], f"{r['latent']}x{r['latent']}", f"{r['image']} px", seconds(r["cheap_seconds"]),
             seconds(r["taesd_seconds"]), ratio(r["ratio"])] for r in data["rows"]]
    return [table(["row", "decoder", "latents", "preview", "cheap", "TAESD", "TAESD/cheap"], rows, align="lllrrrr"),
            f"  {data['device']}, {data['dtype']}, {data['threads']} torch thread(s); medians of {data['repeats']} calls after one that loads the "
            f"decoder. The cheap map is 1/8 of the image's width (1 pixel per latent); TAESD decodes the full size.",
            "  A preview runs every N steps (Settings: preview_every), so its share of a step is this time / N / the step time."]
