"""Reading official weight files and loading them key for key: shared by PuLID, EVA-CLIP and BiSeNet.

`.pt`/`.pth`/`.bin` files are pickles written by `torch.save`; they are read with
`weights_only=True`, which refuses anything but tensors and plain containers, so a tampered file
cannot run code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from pipelines.errors import ModelLoadError


def read_torch_file(path: Path, label: str) -> dict[str, torch.Tensor]:
    """The tensor dictionary of a `.safetensors` or a torch (weights only) file; `label` names it in errors."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # truncated download, an HTML error page saved under the name...
        raise ModelLoadError(f"Cannot read the {label} file {path.name}: {error}") from error
    # Training checkpoints wrap the weights ({"state_dict": ...}) and DataParallel prefixes "module.".
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"Cannot read the {label} file {path.name}: it holds no tensor dictionary.")
    return {key.removeprefix("module."): tensor for key, tensor in state.items()}


def layout_mismatch(module: nn.Module, state: Mapping[str, torch.Tensor], limit: int = 3) -> str | None:
    """A readable description of how `state` differs from `module.state_dict()`, or None if it matches."""
    expected = {key: tuple(t.shape) for key, t in module.state_dict().items()}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [f"{key} {tuple(state[key].shape)} instead of {expected[key]}"
              for key in expected if key in state and tuple(state[key].shape) != expected[key]]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            problems.append(f"{len(items)} {label} ({', '.join(items[:limit])}{more})")
    return "; ".join(problems) or None


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], filename: str, layout: str) -> nn.Module:
    """Load `state` into `module` (built on `meta`) key for key; ModelLoadError naming what differs."""
    problem = layout_mismatch(module, state)
    if problem:
        raise ModelLoadError(f"{filename} does not match the official {layout}: {problem}.")
    module.load_state_dict(state, strict=True, assign=True)
    return module
