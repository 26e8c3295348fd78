"""Tiny LoRA files for the tiny test pipelines, in the kohya / A1111 and diffusers/PEFT layouts."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

RANK = 2
UNET_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
TEXT_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
FLUX_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")


def _linears(module, targets) -> dict[str, torch.nn.Linear]:
    return {name: m for name, m in module.named_modules() if name.endswith(targets) and isinstance(m, torch.nn.Linear)}


def _pair(linear: torch.nn.Linear, generator: torch.Generator, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    down = torch.randn(RANK, linear.in_features, generator=generator) * scale
    up = torch.randn(linear.out_features, RANK, generator=generator) * scale
    return down, up


def lora_state_dict(pipe, family: str, layout: str, seed: int = 0, scale: float = 0.3, text_encoder: bool = True) -> dict:
    """A random LoRA for `pipe`'s attention layers (and its CLIP text encoders) in `layout`."""
    generator = torch.Generator().manual_seed(seed)
    parts = []  # (diffusers prefix, kohya prefix, module, targets)
    if family == "flux":
        parts.append(("transformer", None, pipe.transformer, FLUX_TARGETS))
        if text_encoder:
            parts.append(("text_encoder", "lora_te1", pipe.text_encoder, TEXT_TARGETS))
    else:
        parts.append(("unet", "lora_unet", pipe.unet, UNET_TARGETS))
        if text_encoder:
            if family == "sdxl":
                parts += [("text_encoder", "lora_te1", pipe.text_encoder, TEXT_TARGETS),
                          ("text_encoder_2", "lora_te2", pipe.text_encoder_2, TEXT_TARGETS)]
            else:
                parts.append(("text_encoder", "lora_te", pipe.text_encoder, TEXT_TARGETS))
    state = {}
    for prefix, kohya, module, targets in parts:
        for path, linear in _linears(module, targets).items():
            down, up = _pair(linear, generator, scale)
            if layout == "diffusers":
                state[f"{prefix}.{path}.lora_A.weight"] = down
                state[f"{prefix}.{path}.lora_B.weight"] = up
            elif family == "flux" and prefix == "transformer":
                state.update(_flux_kohya(path, down, up))
            else:
                key = f"{kohya}_{path.replace('.', '_')}"
                state[f"{key}.lora_down.weight"] = down
                state[f"{key}.lora_up.weight"] = up
                state[f"{key}.alpha"] = torch.tensor(float(RANK))
    return state


def _flux_kohya(path: str, down: torch.Tensor, up: torch.Tensor) -> dict:
    """sd-scripts' FLUX names (BFL layout): only the projections that map one to one are written."""
    parts = path.split(".")
    if parts[0] != "transformer_blocks":
        return {}
    block = parts[1]
    target = ".".join(parts[2:])
    names = {"attn.to_out.0": "img_attn_proj"}
    if target not in names:
        return {}
    key = f"lora_unet_double_blocks_{block}_{names[target]}"
    return {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(float(RANK))}


def write_lora(folder: Path, name: str, pipe, family: str, layout: str, seed: int = 0, **options) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file(lora_state_dict(pipe, family, layout, seed, **options), str(path))
    return path
