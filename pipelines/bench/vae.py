"""`bench --suite vae`: VAE decode time, peak memory and fidelity per dtype, side by side in one run.

The SD 1.5 and SDXL VAE architectures are built from the bundled configs with seeded random
weights (random weights cost the same compute as trained ones). Every dtype decodes the same
latent; PSNR is measured against the fp32 decode of it.
"""
from __future__ import annotations

import threading
import time

import psutil
import torch

from pipelines import devices
from pipelines.metrics import psnr
from pipelines.vae import VAE_DTYPES


class PeakRss:
    """Samples the process RSS every few milliseconds: the CPU's stand-in for the GPU allocator peak."""

    def __init__(self, every: float = 0.005):
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._process = psutil.Process()

    def __enter__(self):
        self.base = self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.base


def build_vae(family: str, device: torch.device):
    from diffusers import AutoencoderKL

    from pipelines.model_configs import config_dir

    torch.manual_seed(0)
    config = AutoencoderKL.load_config(config_dir(family) / "vae")
    return AutoencoderKL.from_config(config).eval().to(device)


def timed_decode(vae, latents: torch.Tensor, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, float, int]:
    """(image, seconds, peak bytes) for one decode; the device is synchronized around the timer."""
    vae.to(dtype=dtype)
    z = latents.to(device=device, dtype=dtype)
    gc_and_reset(device)
    with PeakRss() as rss, torch.no_grad():
        devices.synchronize(device)
        start = time.perf_counter()
        image = vae.decode(z, return_dict=False)[0]
        devices.synchronize(device)
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.growth
    return image.float().clamp(-1, 1).cpu(), seconds, peak


def gc_and_reset(device: torch.device) -> None:
    import gc

    gc.collect()
    devices.free_device_memory(device)
    devices.reset_peak_memory(device)


def to_uint8(image: torch.Tensor):
    return ((image[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def run(device: torch.device, quick: bool = False) -> dict:
    sizes = [256, 512] if quick else [512, 1024]
    dtypes = ["fp32", "bf16", "fp16"]
    if device.type == "cpu":
        # PyTorch's CPU fp16 convolutions are a slow reference path: one 256 px decode of the full
        # VAE ran over 300 s here, so the row is reported as skipped instead of stalling the run.
        dtypes = ["fp32", "bf16"]
    rows = []
    for family in ("sd15", "sdxl"):
        vae = build_vae(family, device)
        for size in sizes:
            latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(size))
            timed_decode(vae, latents[:, :, :8, :8], torch.float32, device)  # warm-up (allocator, kernels)
            reference = None
            for name in dtypes:
                image, seconds, peak = timed_decode(vae, latents, VAE_DTYPES[name], device)
                finite = bool(torch.isfinite(image).all())
                pixels = to_uint8(torch.nan_to_num(image))
                if name == "fp32":
                    reference = pixels
                rows.append({
                    "vae": family, "size": size, "dtype": name, "seconds": seconds, "peak_bytes": peak,
                    "psnr_vs_fp32": psnr(reference, pixels) if finite else None, "finite": finite,
                })
        del vae
        gc_and_reset(device)
    return {"rows": rows, "skipped": [] if "fp16" in dtypes else ["fp16 on CPU (no fast kernels: > 300 s per decode)"]}


def report(figures: dict, device: torch.device) -> str:
    lines = ["VAE decode (one image, same latent per size; ratios against fp32 of the same row group)",
             f"{'VAE':5} {'size':>5} {'dtype':5} {'seconds':>8} {'x fp32':>7} {'peak MiB':>9} {'x fp32':>7} {'PSNR dB':>8}"]
    by_group: dict = {}
    for row in figures["rows"]:
        by_group.setdefault((row["vae"], row["size"]), {})[row["dtype"]] = row
    targets = []
    for (vae, size), group in by_group.items():
        base = group["fp32"]
        for name, row in group.items():
            time_ratio = row["seconds"] / base["seconds"]
            memory_ratio = row["peak_bytes"] / base["peak_bytes"] if base["peak_bytes"] > 0 else float("nan")
            score = "inf" if row["psnr_vs_fp32"] == float("inf") else ("NaN!" if row["psnr_vs_fp32"] is None else f"{row['psnr_vs_fp32']:.1f}")
            lines.append(f"{vae:5} {size:>5} {name:5} {row['seconds']:8.3f} {time_ratio:7.2f} {row['peak_bytes'] / 2**20:9.0f} {memory_ratio:7.2f} {score:>8}")
            if name == "bf16":
                targets.append((vae, size, time_ratio, memory_ratio, row["psnr_vs_fp32"]))
    for item in figures["skipped"]:
        lines.append(f"skipped: {item}")
    memory_kind = "GPU allocator peak" if device.type == "cuda" else "process RSS growth, sampled every 5 ms"
    lines.append(f"peak memory: {memory_kind}")
    lines.append("targets on a GPU: bf16 peak <= 0.55x fp32, bf16 time <= fp32, PSNR >= 35 dB")
    for vae, size, time_ratio, memory_ratio, score in targets:
        verdict = [
            f"time {time_ratio:.2f}x {'PASS' if time_ratio <= 1 else 'FAIL'}",
            f"memory {memory_ratio:.2f}x {'PASS' if memory_ratio <= 0.55 else 'FAIL'}",
            f"PSNR {score:.1f} dB {'PASS' if score and score >= 35 else 'FAIL'}" if score else "PSNR n/a",
        ]
        lines.append(f"  {vae} {size}px bf16: " + ", ".join(verdict) + ("" if device.type == "cuda" else " (CPU: informational)"))
    return "\n".join(lines)
