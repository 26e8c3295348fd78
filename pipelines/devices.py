"""Device choice, dtypes per device, synchronization and memory readings.

Kept in one small module so tests can fake a device property at this boundary only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import psutil
import torch


def pick_device(override: str | None = None) -> torch.device:
    """cuda > mps > cpu, unless the user names one (`--device cuda:1`)."""
    if override and override != "auto":
        try:
            device = torch.device(override)
        except (RuntimeError, ValueError):
            raise ValueError(f"--device {override}: unknown device; use auto, cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {override}: CUDA is not available on this machine (use cpu or auto)")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"--device {override}: Apple MPS is not available on this machine (use cpu or auto)")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def denoiser_dtype(device: torch.device, family_name: str) -> torch.dtype:
    """The dtype the denoiser and text encoders run in.

    FLUX was trained in bf16 and overflows in fp16; UNets are fine in fp16 on GPUs. On CPU, half
    precision matmuls are slow or unsupported, so fp32.
    """
    if device.type == "cuda":
        if family_name == "flux":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.float16
    if device.type == "mps":
        return torch.float16 if family_name != "flux" else torch.bfloat16
    return torch.float32


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """Compute capability of a CUDA device, None for anything else (the VAE policy reads this)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device)


def is_amd(device: torch.device) -> bool:
    return device.type == "cuda" and torch.version.hip is not None


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so a timer reading bills work to the stage that queued it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass(frozen=True)
class MemoryReading:
    process_rss_bytes: int
    device_allocated_bytes: int | None = None
    device_peak_bytes: int | None = None

    def describe(self) -> str:
        text = f"RSS {self.process_rss_bytes / 2**30:.2f} GiB"
        if self.device_peak_bytes is not None:
            text += f", GPU peak {self.device_peak_bytes / 2**30:.2f} GiB"
        return text


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def read_memory(device: torch.device) -> MemoryReading:
    rss = psutil.Process(os.getpid()).memory_info().rss
    if device.type == "cuda":
        return MemoryReading(rss, torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device))
    if device.type == "mps":
        return MemoryReading(rss, torch.mps.current_allocated_memory(), None)
    return MemoryReading(rss)


_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_KEEP_FREED_BYTES = 1 << 30


def reuse_freed_host_memory() -> bool:
    """Let tensor buffers freed in one denoising step serve the next (glibc only; False elsewhere).

    By default glibc gives every large allocation its own fresh mmap and returns it on free, so each
    step of a CPU denoise faults in its activations page by page again: on the full SD 1.5 UNet at
    256 px, about 480,000 page faults and 1 s of kernel time per UNet call (measured 2026-12-02; the
    call took 4.6-5.2 s with them, 3.6-4.1 s without). Serving them from the heap, and not trimming it
    mid-run, removes that. RSS does not grow for it: the heap holds what one step needs at its peak,
    and `trim_host_heap` hands the free part back after every generation.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES))
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): its own allocator decides
        return False


def trim_host_heap() -> None:
    """Give freed host memory back to the OS (glibc keeps it after large tensor buffers are freed).

    Without it, RSS creeps up over repeated generations although no object is leaked: heap
    fragmentation from tensor buffers (the core benchmark measured +5.7 % over 20 generations).
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
        pass


def free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} (cuda, {props.total_memory / 2**30:.0f} GiB, compute {props.major}.{props.minor})"
    if device.type == "mps":
        return "Apple GPU (mps)"
    return f"CPU ({os.cpu_count()} cores)"


def device_total_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return None
