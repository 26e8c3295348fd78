"""Tiny-autoencoder files for the preview tests, written in both layouts madebyollin publishes.

`official_decoder` mirrors `taesd.py: Decoder` from github.com/madebyollin/taesd (a reference for the
key layout and the output, test-only: the app builds diffusers' AutoencoderTiny): an nn.Sequential
of Clamp, conv, ReLU, three Blocks, Upsample, conv, ... whose state dict is the standalone
`taesd_decoder.pth` layout (`1.weight`, `3.conv.0.weight`, ..., `19.weight`). Its forward returns
images in [0, 1]; diffusers' decoder returns [-1, 1].
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipelines.families import Family
from pipelines.preview.tiny_vae import APPROX_FOLDER

# A very small AutoencoderTiny for the diffusers-folder layout (the official files have no config, so
# they are always full size: 1.2 M parameters).
TINY_CONFIG = dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                   num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class _Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def official_decoder(latent_channels: int = 4) -> nn.Sequential:
    def stage():
        return [_Block(64, 64), _Block(64, 64), _Block(64, 64), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]

    return nn.Sequential(_Clamp(), _conv(latent_channels, 64), nn.ReLU(), *stage(), *stage(), *stage(), _Block(64, 64), _conv(64, 3))


def seeded_official(latent_channels: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    decoder = official_decoder(latent_channels).eval()
    for parameter in decoder.parameters():  # the default init gives near-flat images; spread the weights
        parameter.data.normal_(0, 0.08)
    return decoder


def approx_dir(models_dir: Path) -> Path:
    folder = Path(models_dir) / APPROX_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_official(models_dir: Path, family: Family, suffix: str = ".safetensors", seed: int = 0,
                   state: dict | None = None) -> tuple[Path, nn.Sequential]:
    """`<taesd|taesdxl|taef1>_decoder<suffix>` with the standalone keys; the reference module it holds."""
    decoder = seeded_official(family.spec.latent_channels, seed)
    state = decoder.state_dict() if state is None else state
    path = approx_dir(models_dir) / f"{family.spec.tiny_autoencoder}_decoder{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path, decoder


def write_diffusers_folder(models_dir: Path, family: Family, seed: int = 0, **config) -> tuple[Path, nn.Module]:
    """`<taesd|taesdxl|taef1>/` as diffusers saves an AutoencoderTiny (config.json + safetensors); the model."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    model = AutoencoderTiny(latent_channels=family.spec.latent_channels, **{**TINY_CONFIG, **config}).eval()
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.2)
    folder = approx_dir(models_dir) / family.spec.tiny_autoencoder
    model.save_pretrained(folder)
    return folder, model
