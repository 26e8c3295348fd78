"""A1111's *Tiling*: pictures that repeat seamlessly (textures, wallpapers), for one generation.

Every 2D convolution of the UNet and the VAE pads its input circularly instead of with zeros, so the
left edge continues the right one and the top the bottom; the denoiser and the decoder then make a
picture whose opposite edges meet. A1111 does the same to every Conv2d of the model. torch's Conv2d
reads `padding_mode` at each call (its circular padding amounts are kept whatever the mode), so the
hook switches the attribute and puts each module's own mode back on detach; no forward is wrapped,
so other libraries' hooks on these modules are untouched.

FLUX.1's transformer has no convolutions to wrap around: the request refuses tiling there.
"""
from __future__ import annotations

import torch

from pipelines.hooks.base import HookContext

TILING_HOOK = "tiling"
TILED_COMPONENTS = ("unet", "vae")


class TilingHook:
    name = TILING_HOOK

    def __init__(self) -> None:
        self._changed: list[tuple[torch.nn.Conv2d, str]] = []

    def cache_key(self):
        return ("circular",)

    def attach(self, pipe, context: HookContext | None = None) -> None:
        if self._changed:
            raise RuntimeError("TilingHook is already attached; detach it first (pipelines.hooks.attached does).")
        for conv in tiled_convolutions(pipe):
            self._changed.append((conv, conv.padding_mode))
            conv.padding_mode = "circular"
        if context is not None:
            context.stats[self.name] = {"convolutions": len(self._changed)}

    def detach(self, pipe) -> None:
        for conv, mode in self._changed:
            conv.padding_mode = mode
        self._changed = []


def tiled_convolutions(pipe) -> list[torch.nn.Conv2d]:
    """The padded 2D convolutions of the UNet and the VAE (a 1x1 convolution pads nothing)."""
    found = []
    for name in TILED_COMPONENTS:
        component = getattr(pipe, name, None)
        if isinstance(component, torch.nn.Module):
            found += [m for m in component.modules() if isinstance(m, torch.nn.Conv2d) and any(p > 0 for p in _padding(m))]
    return found


def _padding(conv: torch.nn.Conv2d) -> tuple:
    if isinstance(conv.padding, str):  # "same" pads, "valid" does not
        return (1,) if conv.padding == "same" else (0,)
    return conv.padding
