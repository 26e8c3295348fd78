"""What differs between model families, in one table.

Everything that branches on SD1.5 / SDXL / FLUX.1 reads it from here, so the generation code never
needs an `if family == ...` ladder of its own.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Family(str, enum.Enum):
    SD15 = "sd15"
    SDXL = "sdxl"
    FLUX = "flux"

    @property
    def spec(self) -> "FamilySpec":
        return FAMILY_SPECS[self]


@dataclass(frozen=True)
class FamilySpec:
    label: str
    default_size: tuple[int, int]
    size_multiple: int  # VAE factor x patch size: FLUX packs 2x2 latent patches
    min_size: int
    max_size: int
    latent_channels: int
    default_steps: int
    default_cfg: float
    default_sampler: str
    # A fixed latent -> RGB map for cheap previews (A1111's "Approx cheap"): rows are latent channels.
    preview_rgb: tuple[tuple[float, float, float], ...]
    # madebyollin's tiny autoencoder for full-size previews: its name in models/VAE-approx (pipelines/preview).
    tiny_autoencoder: str


FAMILY_SPECS: dict[Family, FamilySpec] = {
    Family.SD15: FamilySpec(
        label="Stable Diffusion 1.5",
        default_size=(512, 512),
        size_multiple=8,
        min_size=64,
        max_size=2048,
        latent_channels=4,
        default_steps=20,
        default_cfg=7.0,
        default_sampler="Euler a",
        preview_rgb=((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)),
        tiny_autoencoder="taesd",
    ),
    Family.SDXL: FamilySpec(
        label="Stable Diffusion XL",
        default_size=(1024, 1024),
        size_multiple=8,
        min_size=256,
        max_size=4096,
        latent_channels=4,
        default_steps=25,
        default_cfg=6.0,
        default_sampler="DPM++ 2M",  # with the Automatic schedule type: Karras, as in A1111
        preview_rgb=((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188)),
        tiny_autoencoder="taesdxl",
    ),
    Family.FLUX: FamilySpec(
        label="FLUX.1",
        default_size=(1024, 1024),
        size_multiple=16,
        min_size=256,
        max_size=2048,
        latent_channels=16,
        default_steps=28,
        default_cfg=3.5,  # FLUX.1-dev's distilled guidance, not classifier-free guidance
        default_sampler="Flow Euler",
        preview_rgb=(
            (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
            (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
            (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
            (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778),
        ),
        tiny_autoencoder="taef1",
    ),
}
