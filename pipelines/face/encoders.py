"""The torch face encoders of PuLID: BiSeNet parsing and the EVA02-CLIP image tower.

`FaceEncoders.load(models_dir, device)` reads the two official files unchanged
(`models/facexlib/parsing_bisenet.pth`, `models/eva_clip/EVA02_CLIP_L_336_psz14_s6B.pt`),
`encode(aligned_rgb)` turns one aligned 512x512 face into what the IDFormer needs, and `release()`
frees both networks so that nothing of the face stage stays on the compute device while the image
is denoised and decoded.

Both files are pickles written by `torch.save`, read with `weights_only=True` (see weight_files).
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from pipelines import devices
from pipelines.errors import ModelLoadError, ModelNotFound
from pipelines.face.bisenet import NUM_CLASSES, BiSeNet, face_features_image, normalize_imagenet
from pipelines.face.eva_clip import EvaVisionConfig, EvaVisionTower, preprocess, rotary_tables
from pipelines.face.files import face_file_status
from pipelines.face.weight_files import load_strict, read_torch_file
from pipelines.families import Family

log = logging.getLogger(__name__)

EVA_FILE = "EVA02_CLIP_L_336_psz14_s6B.pt"
PARSING_FILE = "parsing_bisenet.pth"
ROPE_KEY = re.compile(r"(^|\.)rope\.freqs_(cos|sin)$")


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], filename: str, what: str) -> nn.Module:
    return load_strict(module, state, filename, f"{what} layout").float().eval().requires_grad_(False)


# -- EVA-CLIP -------------------------------------------------------------------------------------


def eva_config_from_state(visual: Mapping[str, torch.Tensor], filename: str) -> EvaVisionConfig:
    """Sizes read from the tensors; for the official file they are EVA02-CLIP-L-14-336's.

    Reading them (instead of assuming them) lets the same strict loader take the tiny towers the
    tests write in the official layout; the head width is the one size the tensors do not carry.
    """
    try:
        patch = visual["patch_embed.proj.weight"].shape[-1]
        tokens, width = visual["pos_embed"].shape[1:]
        grid = int(round((tokens - 1) ** 0.5))
        layers = 1 + max(int(key.split(".")[1]) for key in visual if key.startswith("blocks."))
        config = EvaVisionConfig(
            image_size=grid * patch, patch_size=patch, width=width, layers=layers,
            head_width=64 if width % 64 == 0 else width, mlp_hidden=visual["blocks.0.mlp.w1.weight"].shape[0],
            embed_dim=visual["head.weight"].shape[0],
        )
    except (KeyError, ValueError, IndexError) as error:
        raise ModelLoadError(f"{filename} is not an EVA-CLIP image tower in the official layout (no {error} tensor).") from None
    if len(config.hidden_blocks) != 5:
        raise ModelLoadError(f"{filename} has {layers} blocks; PuLID needs the hidden states of blocks 4-20 (24 blocks in EVA02-CLIP-L).")
    return config


def vision_tower_state(state: Mapping[str, torch.Tensor], filename: str) -> dict[str, torch.Tensor]:
    """The `visual.*` tensors of a full EVA-CLIP checkpoint (text tower ignored), without `visual.`.

    A file holding only the image tower (no prefix) is accepted as well.
    """
    visual = {key[len("visual."):]: tensor for key, tensor in state.items() if key.startswith("visual.")}
    if not visual and "patch_embed.proj.weight" in state:
        visual = dict(state)
    if not visual:
        shown = ", ".join(sorted({key.split(".", 1)[0] for key in state})[:6]) or "no tensors"
        raise ModelLoadError(f"{filename} is not an EVA-CLIP checkpoint: no visual.* tensors (found {shown}).")
    return visual


def drop_rotary_tables(visual: dict[str, torch.Tensor], config: EvaVisionConfig, filename: str) -> dict[str, torch.Tensor]:
    """Remove the stored rotary tables after checking that they equal the ones computed here.

    They are constants, but comparing them proves that our position convention (pair layout, row
    and column halves, the 24 -> 16 grid rescale) is the one the weights were trained with.
    """
    cos, sin = rotary_tables(config)
    kept = {}
    for key, tensor in visual.items():
        match = ROPE_KEY.search(key)
        if match is None:
            kept[key] = tensor
            continue
        ours = cos if match.group(2) == "cos" else sin
        if tensor.shape != ours.shape or not torch.allclose(tensor.float(), ours, atol=2e-3):
            raise ModelLoadError(f"{filename}: the stored rotary table {key} differs from EVA02-CLIP's; this is not the expected model.")
    return kept


def load_eva_tower(path: Path) -> EvaVisionTower:
    started = time.perf_counter()
    state = read_torch_file(path, "EVA-CLIP")
    visual = vision_tower_state(state, path.name)
    config = eva_config_from_state(visual, path.name)
    visual = drop_rotary_tables(visual, config, path.name)
    with torch.device("meta"):
        tower = EvaVisionTower(config)
    tower = _load_strict(tower, visual, path.name, "EVA-CLIP image tower (visual.*)")
    cos, sin = rotary_tables(config)  # buffers built on meta have no values
    tower.register_buffer("rope_cos", cos, persistent=False)
    tower.register_buffer("rope_sin", sin, persistent=False)
    log.info("EVA-CLIP: %s loaded in %.2f s (%d tensors, width %d, %d blocks)", path.name, time.perf_counter() - started,
             len(visual), config.width, config.layers)
    return tower


# -- BiSeNet --------------------------------------------------------------------------------------


def load_bisenet(path: Path) -> BiSeNet:
    state = read_torch_file(path, "face parsing")
    with torch.device("meta"):
        network = BiSeNet(NUM_CLASSES)
    # BatchNorm's step counters are training bookkeeping; files saved by old torch versions lack them.
    for key, tensor in network.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=tensor.dtype)
    return _load_strict(network, state, path.name, "facexlib BiSeNet (parsing_bisenet.pth)")


# -- precision ------------------------------------------------------------------------------------


def face_stage_dtype(device: torch.device | str, family: Family | str) -> torch.dtype:
    """The dtype EVA-CLIP and the IDFormer compute in for a model `family`, as the official pipelines.

    - SDXL (PuLID v1.1, `pipeline_v1_1.py`): float32 everywhere. EVA-CLIP is created in fp32 and only
      moved to the GPU, the IDFormer is `IDFormer().to(device)`; only the UNet runs in fp16.
    - FLUX.1 (`pipeline_flux.py`, `weight_dtype=torch.bfloat16` in `app_flux.py`): EVA-CLIP, the
      IDFormer and the ArcFace embedding are cast to bfloat16, and the L2 norm and the concat run in
      it. Here: the FLUX transformer's own dtype on that device (`devices.denoiser_dtype`), i.e.
      bfloat16 on CUDA GPUs that support it (and MPS), float32 on older GPUs and on the CPU.

    Why float32 on the CPU for FLUX as well: bfloat16 is only fast on CPUs with native bf16
    (AVX512-BF16/AMX: 24 EVA blocks 4.9 s vs 12.6 s in fp32 on 2 cores); on the others it is emulated
    and ~2.7x slower than fp32 (35 s vs 13 s, same machine limited to AVX2). fp32 is also what the
    FLUX transformer itself runs in on the CPU, and the result does not depend on the CPU model.
    BiSeNet always runs in float32 (it does in both official pipelines).
    """
    if Family(family) is Family.FLUX:
        return devices.denoiser_dtype(torch.device(device), "flux")
    return torch.float32


# -- the pair -------------------------------------------------------------------------------------


@dataclass
class FaceEncoding:
    eva_embedding: torch.Tensor  # (1, 768): not normalised; PuLID L2-normalises it before the concat
    hidden_states: list[torch.Tensor]  # five (1, 577, 1024)
    eva_input: np.ndarray  # (512, 512, 3) uint8: the parsed face as EVA-CLIP sees it


def _required_path(models_dir: Path, name: str) -> Path:
    status = next(s for s in face_file_status(models_dir) if s.name == name)
    if status.path is None:
        raise ModelNotFound(f"{name} ({status.purpose}) is missing: put it in {status.folder}. Likeness cannot download it.")
    return status.path


class FaceEncoders:
    """BiSeNet + EVA-CLIP on `device`, for one batch of new photos; `release()` when done."""

    def __init__(self, parsing: BiSeNet | None, eva: EvaVisionTower | None, device: torch.device, eva_dtype: torch.dtype):
        self.parsing = parsing
        self.eva = eva
        self.device = device
        self.eva_dtype = eva_dtype

    @classmethod
    def load(cls, models_dir: Path | str, device: torch.device | str, *, with_eva: bool = True,
             eva_dtype: torch.dtype = torch.float32) -> "FaceEncoders":
        """Read the files and move the networks to `device`: BiSeNet in float32, EVA-CLIP in
        `eva_dtype` (`face_stage_dtype(device, family)`: the official precision for the model family).
        `with_eva=False` loads only the parsing network (the Face tab's preview)."""
        device = torch.device(device)
        models_dir = Path(models_dir)
        parsing = load_bisenet(_required_path(models_dir, PARSING_FILE)).to(device)
        eva = load_eva_tower(_required_path(models_dir, EVA_FILE)).to(device, eva_dtype) if with_eva else None
        return cls(parsing, eva, device, eva_dtype)

    @torch.no_grad()
    def parse(self, aligned_rgb: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The EVA input for an aligned face: (1, 3, 512, 512) in [0, 1] on the device, and as uint8 RGB."""
        if self.parsing is None:
            raise RuntimeError("the face encoders were released")
        image = torch.from_numpy(np.ascontiguousarray(aligned_rgb)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        labels = self.parsing(normalize_imagenet(image)).argmax(dim=1)
        features = face_features_image(image, labels)
        shown = (features[0].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return features, shown

    @torch.no_grad()
    def encode(self, aligned_rgb: np.ndarray) -> tuple[torch.Tensor, list[torch.Tensor], np.ndarray]:
        """One aligned 512x512 RGB face -> (EVA embedding (1, 768), five hidden states, EVA input image).

        The resize and normalisation run in float32, then the pixels are cast to `eva_dtype` (the
        official order); the embedding and hidden states come back in `eva_dtype`, for the IDFormer
        to take them in the same precision as the official pipeline does."""
        if self.eva is None:
            raise RuntimeError("EVA-CLIP is not loaded (released, or loaded with with_eva=False)")
        features, shown = self.parse(aligned_rgb)
        pixels = preprocess(features, self.eva.config.image_size).to(self.eva_dtype)
        embedding, hidden = self.eva(pixels)
        return embedding, list(hidden), shown

    def release(self) -> None:
        """Drop both networks and give their device memory back before the denoiser runs."""
        self.parsing = self.eva = None
        devices.free_device_memory(self.device)
