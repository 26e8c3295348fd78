"""madebyollin's tiny autoencoders (TAESD, TAESDXL, TAEF1) as preview decoders: finding the file,
reading it in either key layout, and building diffusers' AutoencoderTiny around it.

Files live in `models/VAE-approx/` (A1111's folder) under madebyollin's names: `taesd_decoder`
(SD 1.5), `taesdxl_decoder` (SDXL), `taef1_decoder` (FLUX.1), as `.safetensors` or, with the pickle
setting on, `.pth`/`.pt` (read with `torch.load(weights_only=True)`); or diffusers' layout, a folder
`taesd/` (`taesdxl/`, `taef1/`) holding `diffusion_pytorch_model.safetensors` and `config.json`, as
on the Hugging Face hub. Nothing is ever downloaded.

Key layouts. madebyollin's standalone decoder (`taesd.py: Decoder`) is an `nn.Sequential` whose
entry 0 is the weightless Clamp: `1.weight` is the first conv, `3.conv.0.weight` the first block,
`19.weight` the last conv. diffusers' `DecoderTiny` clamps in `forward`, so the same modules sit
one index lower, `layers.0.weight` ... `layers.18.weight` (the map madebyollin's own diffusers
wrapper for TAEF2 applies the other way). A whole TAESD module or AutoencoderTiny checkpoint prefixes
the decoder's keys with `decoder.`; an encoder in the file is not used. Every file is checked key by
key and shape by shape against the decoder built on the `meta` device before anything is loaded.

Latents. The tiny decoders read the denoiser's latents as they are: their diffusers configs say
scaling_factor 1.0 and shift_factor 0.0, so SD's latents are not divided by 0.18215 and FLUX's
unpacked latents are not unscaled or shifted (ComfyUI, which holds raw-VAE latents at that point,
multiplies by 0.18215 / 0.13025, or shifts by 0.1159 and scales by 0.3611, before its TAESD).
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.checkpoints import pickle_refusal, read_pickle_tensors, read_safetensors_header
from pipelines.errors import ModelLoadError
from pipelines.families import Family

APPROX_FOLDER = "VAE-approx"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLE_SUFFIXES = (".pth", ".pt")
WRAPPERS = ("state_dict", "model")  # training checkpoints keep the weights under one of these


@dataclass(frozen=True)
class TinyDecoderFile:
    """One tiny autoencoder found on disk: a weights file, or a diffusers folder."""

    path: Path
    family: Family

    @property
    def label(self) -> str:
        return self.family.spec.tiny_autoencoder.upper()  # TAESD, TAESDXL, TAEF1

    @property
    def weights(self) -> Path:
        return self.path / DIFFUSERS_WEIGHTS if self.path.is_dir() else self.path

    def identity(self) -> tuple:
        """Changes when the file is replaced: (path, mtime, size) of the weights, or of the folder when they are missing."""
        target = self.weights if self.weights.exists() else self.path
        stat = target.stat()
        return str(target), stat.st_mtime_ns, stat.st_size


def approx_folder(models_dir: Path) -> Path:
    return Path(models_dir) / APPROX_FOLDER


def candidates(models_dir: Path, family: Family) -> list[Path]:
    """Where the family's tiny decoder may be, first found wins: safetensors, the diffusers folder, pickles."""
    folder, stem = approx_folder(models_dir), family.spec.tiny_autoencoder
    return [folder / f"{stem}_decoder.safetensors", folder / stem] + [folder / f"{stem}_decoder{suffix}" for suffix in PICKLE_SUFFIXES]


def find_tiny_decoder(models_dir: Path, family: Family) -> TinyDecoderFile | None:
    for path in candidates(models_dir, family):
        if path.is_file() or (path.is_dir() and path.suffix == ""):  # a file, or the diffusers folder
            return TinyDecoderFile(path, family)
    return None


# -- reading ----------------------------------------------------------------------------------------


def read_tensors(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """The tensors of one file as stored; ModelLoadError naming the file if it cannot be read."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelLoadError(pickle_refusal(path))
        return read_pickle_tensors(path, WRAPPERS)
    if not path.is_file():
        raise ModelLoadError(f"{path.parent.name}/ has no {path.name}: a diffusers AutoencoderTiny folder holds {DIFFUSERS_WEIGHTS} and config.json.")
    read_safetensors_header(path)  # a truncated or corrupt file gets its own message, naming it
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # safetensors raises its own error types for damaged data
        raise ModelLoadError(f"{path.name} is not a readable safetensors file: {str(error)[:200]}") from error


def to_diffusers_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Decoder weights under DecoderTiny's names (`layers.N...`), from any of the three layouts.

    `decoder.`-prefixed keys (a whole TAESD or AutoencoderTiny) keep only the decoder; madebyollin's
    standalone numbering `N.` becomes `layers.{N-1}.` (his entry 0 is the Clamp). Keys that fit no
    layout are kept as they are, so the shape check names them.
    """
    if any(key.startswith("decoder.") for key in state):
        state = {key[len("decoder."):]: value for key, value in state.items() if key.startswith("decoder.")}
    renamed = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        renamed[f"layers.{int(head) - 1}.{rest}" if head.isdigit() and int(head) > 0 else key] = value
    return renamed


def read_config(found: TinyDecoderFile) -> dict:
    """AutoencoderTiny's arguments: the diffusers folder's config.json, else the official files' (defaults)."""
    if not found.path.is_dir():
        return {"latent_channels": found.family.spec.latent_channels}
    config_file = found.path / "config.json"
    if not config_file.is_file():
        return {"latent_channels": found.family.spec.latent_channels}
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{found.path.name}/config.json cannot be read: {error}.") from error
    if not isinstance(config, dict):
        raise ModelLoadError(f"{found.path.name}/config.json does not hold a JSON object.")
    accepted = set(inspect.signature(_autoencoder_tiny().__init__).parameters) - {"self"}
    return {key: value for key, value in config.items() if key in accepted}


# -- building ---------------------------------------------------------------------------------------


def _autoencoder_tiny():
    from diffusers import AutoencoderTiny  # imported when a TAESD preview is first asked for

    return AutoencoderTiny


def empty_decoder(config: dict):
    """AutoencoderTiny on the `meta` device (no memory, no random init): its decoder names every key and shape
    a file must have. The preview only decodes, so the encoder is dropped rather than filled with noise."""
    with torch.device("meta"):
        net = _autoencoder_tiny()(**config)
    net.encoder = None
    return net


def layout_problems(expected: dict[str, tuple], found: dict[str, tuple]) -> list[str]:
    """What differs between two {key: shape} tables, in words (first few names of each kind)."""
    def names(keys) -> str:
        keys = sorted(keys)
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    missing, unexpected = expected.keys() - found.keys(), found.keys() - expected.keys()
    wrong = [key for key in expected.keys() & found.keys() if tuple(expected[key]) != tuple(found[key])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of its {len(expected)} weights missing ({names(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({names(unexpected)})")
    for key in sorted(wrong)[:3]:
        problems.append(f"{key} is {'x'.join(map(str, found[key]))}, expected {'x'.join(map(str, expected[key]))}")
    if len(wrong) > 3:
        problems.append(f"{len(wrong) - 3} more of the wrong shape")
    return problems


def build_tiny_decoder(found: TinyDecoderFile, allow_pickle: bool = False):
    """The AutoencoderTiny (decoder only, CPU, eval, no grad) for `found`; ModelLoadError naming the file when
    it cannot be read or does not hold the family's tiny decoder (latent channels, keys, shapes)."""
    config = read_config(found)
    channels = config.get("latent_channels", 4)
    if channels != found.family.spec.latent_channels:
        raise ModelLoadError(f"{found.path.name} is a tiny autoencoder for {channels} latent channels; {found.family.spec.label} "
                             f"latents have {found.family.spec.latent_channels} ({found.label} is the one to use).")
    state = to_diffusers_names(read_tensors(found.weights, allow_pickle))
    try:
        net = empty_decoder(config)
    except Exception as error:  # a config.json with values AutoencoderTiny refuses
        raise ModelLoadError(f"{found.path.name}/config.json does not describe an AutoencoderTiny: {error}") from error
    expected = {key: tuple(value.shape) for key, value in net.decoder.state_dict().items()}
    problems = layout_problems(expected, {key: tuple(value.shape) for key, value in state.items()})
    if problems:
        raise ModelLoadError(f"{found.path.name} does not hold a {found.label} decoder ({found.family.spec.label}): {'; '.join(problems)}.")
    net.decoder.load_state_dict({key: value.float() for key, value in state.items()}, strict=True, assign=True)
    return net.eval().requires_grad_(False)
