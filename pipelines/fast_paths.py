"""Speed settings applied once when a model is loaded: `torch.compile` of the denoiser, channels-last convolutions.

Both are off by default: each pays only on some hardware (the GPU suite, `bench --suite gpu`, has a row
for each, measured against the default in the same process).

- `torch.compile` (`torch_compile`: off | default | max-autotune) compiles the denoiser (the UNet, or
  FLUX's transformer) in place with `nn.Module.compile`, so the compiled graphs stay with the model
  while it is cached: later generations of the same model reuse them, and a model evicted and loaded
  again compiles again. `dynamic=None` (PyTorch's automatic dynamic shapes): the first size compiles a
  static graph; the first *other* size recompiles once with symbolic sizes, which every later size
  reuses. `dynamic=False` would recompile for every new size (and fall back to eager past dynamo's
  cache limit of 8); `dynamic=True` would give up the static graph of the common size. The first
  generation after a load pays the compile (about a minute for SDXL's UNet, more with max-autotune).
  Hooks that keep Python state per step (DeepCache, the FLUX block caches) make dynamo guard on that
  state; measure before combining them.
- Channels-last (`channels_last`) stores convolution weights NHWC, which cuDNN's tensor-core kernels
  prefer on recent NVIDIA GPUs; it applies to the UNet and the VAE (FLUX's transformer has no
  convolutions). On a CPU it is usually slower.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

COMPILE_MODES = ("off", "default", "max-autotune")


@dataclass(frozen=True)
class FastPaths:
    torch_compile: str = "off"  # off | default | max-autotune
    channels_last: bool = False

    def __post_init__(self):
        if self.torch_compile not in COMPILE_MODES:
            raise ValueError(f"torch_compile must be one of {', '.join(COMPILE_MODES)}, got {self.torch_compile!r}")

    @property
    def active(self) -> bool:
        return self.torch_compile != "off" or self.channels_last


def denoiser(pipe) -> torch.nn.Module | None:
    return getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)


def apply_fast_paths(pipe, paths: FastPaths) -> list[str]:
    """Apply `paths` to a freshly loaded pipeline, in place; returns what was done, for the load notice."""
    done = []
    if paths.channels_last:
        for name in ("unet", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.to(memory_format=torch.channels_last)
                done.append(f"{name} channels-last")
    model = denoiser(pipe)
    if paths.torch_compile != "off" and model is not None:
        model.compile(mode=paths.torch_compile, dynamic=None)
        done.append(f"{type(model).__name__} compiled on first use (torch.compile mode={paths.torch_compile})")
    return done


def is_compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None
