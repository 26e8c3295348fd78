"""Reading a single-file checkpoint's header and telling which family and layout it is.

Only the safetensors header is read (a few KB): listing a folder of 7 GB files stays instant,
and a truncated or corrupt file is caught before anything tries to load it.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import ModelLoadError
from pipelines.families import Family

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
MAX_HEADER_BYTES = 100 * 2**20


@dataclass(frozen=True)
class CheckpointLayout:
    family: Family | None
    kind: str  # "ldm" (original SD layout), "flux-transformer", "lora" (not a model: see pipelines/lora), or "unknown"
    problem: str | None = None  # why it cannot be used, in words for the user


def read_safetensors_header(path: Path) -> dict:
    """Return the header (tensor name -> {dtype, shape, data_offsets}); raise ModelLoadError if damaged."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelLoadError(f"{path.name} is empty or truncated ({size} bytes): not a safetensors file.")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len <= 0 or header_len > min(MAX_HEADER_BYTES, size - 8):
            raise ModelLoadError(f"{path.name} is not a valid safetensors file (header length {header_len}, file {size} bytes).")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path.name} has a corrupt safetensors header ({error.__class__.__name__}).") from error
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path.name} has a corrupt safetensors header.")
    header.pop("__metadata__", None)
    data_size = size - 8 - header_len
    end = 0
    for name, info in header.items():
        try:
            begin, stop = info["data_offsets"]
        except (TypeError, KeyError, ValueError) as error:
            raise ModelLoadError(f"{path.name} has a corrupt safetensors header (entry {name!r}).") from error
        end = max(end, stop)
    if end > data_size:
        raise ModelLoadError(
            f"{path.name} is truncated: its header needs {end:,} bytes of tensor data but the file has {data_size:,}. "
            f"Download it again."
        )
    return header


def detect_layout(header: dict) -> CheckpointLayout:
    keys = header.keys()

    def has_prefix(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has_prefix("conditioner.embedders.1.model.") or has_prefix("conditioner.embedders.0.transformer."):
        return _unet_inputs(header, Family.SDXL)
    if has_prefix("conditioner.embedders.0.model."):
        return CheckpointLayout(None, "ldm", "This is an SDXL refiner checkpoint; only SDXL base models are supported.")
    if has_prefix("cond_stage_model.model.transformer."):
        return CheckpointLayout(None, "ldm", "This is a Stable Diffusion 2.x checkpoint; Likeness supports SD 1.5, SDXL and FLUX.1.")
    if has_prefix("cond_stage_model.transformer.") and has_prefix("model.diffusion_model."):
        return _unet_inputs(header, Family.SD15)
    flux_markers = ("double_blocks.0.img_attn.qkv.weight", "model.diffusion_model.double_blocks.0.img_attn.qkv.weight")
    if any(m in keys for m in flux_markers) or (
        "transformer_blocks.0.attn.add_q_proj.weight" in keys and has_prefix("single_transformer_blocks.")
    ):
        return CheckpointLayout(Family.FLUX, "flux-transformer")
    if has_prefix("model.diffusion_model.input_blocks."):
        return CheckpointLayout(None, "unknown", "This file holds only a UNet in the original layout, without text encoders; Likeness needs a full checkpoint.")
    if has_prefix("encoder.down") or has_prefix("decoder.up"):
        return CheckpointLayout(None, "unknown", "This file is a standalone VAE, not a full checkpoint.")
    if has_prefix("lora_") or any(".lora_" in k or "lora_down" in k for k in keys):
        return CheckpointLayout(None, "lora", "This file is a LoRA, not a full checkpoint; put it in models/Lora.")
    sample = ", ".join(list(keys)[:3])
    return CheckpointLayout(None, "unknown", f"Unknown checkpoint layout (first keys: {sample}); expected an SD 1.5, SDXL or FLUX.1 checkpoint.")


UNET_INPUT_KEY = "model.diffusion_model.input_blocks.0.0.weight"
INPAINTING_CHANNELS = 9  # 4 latent + 1 mask + 4 masked-image latent channels


def unet_in_channels(header: dict) -> int:
    """The UNet's input channels from its first convolution's shape (4 for text-to-image models)."""
    shape = header.get(UNET_INPUT_KEY, {}).get("shape", [0, 4])
    return shape[1] if len(shape) > 1 else 4


def _unet_inputs(header: dict, family: Family) -> CheckpointLayout:
    """Text-to-image (4 channels) and inpainting (9) UNets load; others (instruct-pix2pix's 8) do not."""
    channels = unet_in_channels(header)
    if channels in (4, INPAINTING_CHANNELS):
        return CheckpointLayout(family, "ldm")
    return CheckpointLayout(None, "ldm", f"This {family.spec.label} checkpoint takes {channels} input channels (an instruct or other "
                                         "special model); text-to-image (4) and inpainting (9) models are supported.")


def read_pickle_keys(path: Path) -> dict:
    """Tensor names and shapes of a pickle checkpoint, unpickled with weights_only=True (no code runs)."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # weights_only refuses anything but tensors and plain containers
        raise ModelLoadError(f"{path.name} could not be read as a weights-only pickle: {error.__class__.__name__}: {str(error)[:200]}") from error
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.name} does not hold a state dict.")
    return {k: {"shape": list(v.shape)} for k, v in data.items() if hasattr(v, "shape")}


def read_pickle_tensors(path: Path, wrappers: tuple[str, ...] = ()) -> dict:
    """The tensors of a small pickle file (an upscaler, a tiny autoencoder) with torch.load(weights_only=True):
    no code runs. Training checkpoints keep the weights under one of `wrappers` (the first found is used).
    ModelLoadError naming the file when it is not a weights-only dictionary of tensors."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only refuses code; a truncated zip or an HTML page fails here too
        raise ModelLoadError(f"{path.name} could not be read as a weights-only pickle: {error.__class__.__name__}: {str(error)[:200]}") from error
    for wrapper in wrappers:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path.name} does not hold a dictionary of tensors.")
    return state


def inspect_checkpoint(path: Path, allow_pickle: bool = False) -> CheckpointLayout:
    """Family and layout of a single file, or a layout carrying the problem (never raises for bad files)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            return CheckpointLayout(None, "pickle", pickle_refusal(path))
        try:
            return detect_layout(read_pickle_keys(path))
        except ModelLoadError as error:
            return CheckpointLayout(None, "pickle", str(error))
    try:
        header = read_safetensors_header(path)
    except ModelLoadError as error:
        return CheckpointLayout(None, "unknown", str(error))
    except OSError as error:
        return CheckpointLayout(None, "unknown", f"{path.name} cannot be read: {error.strerror or error}.")
    if not header:
        return CheckpointLayout(None, "unknown", f"{path.name} holds no tensors.")
    return detect_layout(header)


def pickle_refusal(path: Path) -> str:
    return (
        f"{path.name} is a pickle checkpoint, which can run code when loaded; Likeness loads .safetensors only. "
        f"Convert it to .safetensors, or turn on 'Allow pickle checkpoints' (loaded with weights_only=True)."
    )
