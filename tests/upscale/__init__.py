"""Tiny seeded ESRGAN nets written as weight files, for the upscale tests (CPU, milliseconds)."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipelines.upscale.rrdbnet import RRDBConfig, RRDBNet


def tiny_config(scale: int = 4) -> RRDBConfig:
    return RRDBConfig(scale=scale, num_feat=8, num_block=2, num_grow_ch=4)


def tiny_state(scale: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict of a tiny RRDBNet with seeded random weights (BasicSR names)."""
    torch.manual_seed(seed)
    net = RRDBNet(tiny_config(scale))
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def to_old_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BasicSR names -> the original ESRGAN names (written here independently of the code under test)."""
    num_block = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    tail = {"conv_first": "model.0", "conv_body": f"model.1.sub.{num_block}", "conv_up1": "model.3",
            "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}
    old = {}
    for key, value in state.items():
        if m := re.fullmatch(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)", key):
            old[f"model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.0.{m[4]}"] = value
        else:
            module, kind = key.rsplit(".", 1)
            old[f"{tail[module]}.{kind}"] = value
    return old


def write_esrgan(path: Path, state: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
