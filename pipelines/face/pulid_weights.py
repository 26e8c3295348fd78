"""Load the official PuLID weight files unchanged, with strict key matching.

| file (in `models/pulid/`)          | family  | prefixes                                        |
|------------------------------------|---------|-------------------------------------------------|
| `pulid_v1.1.safetensors`           | SDXL    | `id_adapter.*` (IDFormer), `id_adapter_attn_layers.{i}.id_to_k/v.weight` |
| `pulid_flux_v0.9.1.safetensors`    | FLUX.1  | `pulid_encoder.*` (IDFormer), `pulid_ca.{0..19}.*` |
| `pulid_flux_v0.9.0.safetensors`    | FLUX.1  | same layout as v0.9.1                            |

SDXL: `i` in `id_adapter_attn_layers.{i}` is the position of a processor in `unet.attn_processors`
(the official code wraps every processor in one ModuleList); self-attention processors (`attn1`,
even `i`) hold no weights, so only the 70 cross-attention processors of an SDXL UNet (odd `i`,
1..139) carry `id_to_k` / `id_to_v` of shape (hidden, 2048), hidden 640 or 1280.
FLUX.1: one `PerceiverAttentionCA` after every 2nd double block and every 4th single block:
ceil(19 / 2) + ceil(38 / 4) = 10 + 10 = 20.

The family is read from the keys, never from the file name; a file of the other family, the old v1
file (`pulid_v1.bin`, a different encoder) or a file with missing, extra or mis-shaped keys is a
`ModelLoadError` naming the file and what is wrong. A missing file is a `ModelNotFound` naming the
file and the folder `models/pulid/`.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from pipelines.errors import ModelLoadError, ModelNotFound
from pipelines.face.idformer import IDFormer, IDFormerConfig, PerceiverAttentionCA
from pipelines.face.weight_files import load_strict, read_torch_file

log = logging.getLogger(__name__)

PULID_FOLDER = "pulid"  # under the models folder: models/pulid/
SDXL_FILE = "pulid_v1.1.safetensors"
FLUX_FILES = ("pulid_flux_v0.9.1.safetensors", "pulid_flux_v0.9.0.safetensors")  # preferred first
DEFAULT_FILES = {"sdxl": (SDXL_FILE,), "flux": FLUX_FILES}
FAMILY_LABELS = {"sdxl": "Stable Diffusion XL", "flux": "FLUX.1", "sd15": "Stable Diffusion 1.5"}

# Checkpoint prefixes: (encoder, injection layers) per family.
PREFIXES = {"sdxl": ("id_adapter", "id_adapter_attn_layers"), "flux": ("pulid_encoder", "pulid_ca")}

FLUX_DOUBLE_INTERVAL = 2  # a CA block after double blocks 0, 2, 4, ...
FLUX_SINGLE_INTERVAL = 4  # and after single blocks 0, 4, 8, ...
FLUX_DOUBLE_BLOCKS = 19
FLUX_SINGLE_BLOCKS = 38


@dataclass(frozen=True)
class FluxCrossAttentionConfig:
    """Sizes of PuLID-FLUX's `PerceiverAttentionCA` blocks; the defaults are FLUX.1's."""

    dim: int = 3072  # transformer width (image tokens)
    dim_head: int = 128
    heads: int = 16
    kv_dim: int = 2048  # ID embedding width (IDFormer output_dim)


def flux_ca_count(double_blocks: int = FLUX_DOUBLE_BLOCKS, single_blocks: int = FLUX_SINGLE_BLOCKS) -> int:
    """How many CA blocks a transformer with these block counts has (20 for FLUX.1)."""
    return math.ceil(double_blocks / FLUX_DOUBLE_INTERVAL) + math.ceil(single_blocks / FLUX_SINGLE_INTERVAL)


class IdProjection(nn.Module):
    """The ID key/value projections of one SDXL cross-attention (official `IDAttnProcessor2_0`'s weights)."""

    def __init__(self, hidden_size: int, id_dim: int = 2048):
        super().__init__()
        self.id_to_k = nn.Linear(id_dim, hidden_size, bias=False)
        self.id_to_v = nn.Linear(id_dim, hidden_size, bias=False)


class NoIdProjection(nn.Module):
    """Placeholder at a self-attention position: no weights, like the official plain `AttnProcessor`."""


def _attention_module(unet: nn.Module, processor_name: str) -> nn.Module:
    return unet.get_submodule(processor_name.removesuffix(".processor"))


class SdxlIdLayers(nn.ModuleList):
    """One entry per `unet.attn_processors` entry, in order: `IdProjection` at cross-attention
    positions, `NoIdProjection` elsewhere, so `state_dict()` keys are `{i}.id_to_k.weight` exactly as
    under the official `id_adapter_attn_layers.` prefix. `processor_names[i]` is entry i's processor.
    """

    def __init__(self, processor_names: list[str], projections: list[nn.Module]):
        super().__init__(projections)
        self.processor_names = list(processor_names)

    @classmethod
    def for_unet(cls, unet: nn.Module, id_dim: int = 2048) -> "SdxlIdLayers":
        """Fresh (random) ID layers shaped for `unet` (works on a `meta` UNet).

        As the official `hack_unet_attn_layers`: every processor except `attn1` gets the ID branch;
        its width is the attention's key width (640 / 1280 for SDXL).
        """
        names = list(unet.attn_processors)
        projections: list[nn.Module] = []
        for name in names:
            if name.endswith("attn1.processor"):
                projections.append(NoIdProjection())
            else:
                hidden = _attention_module(unet, name).to_k.out_features
                projections.append(IdProjection(hidden, id_dim))
        return cls(names, projections)

    def cross_attention_indices(self) -> list[int]:
        return [i for i, layer in enumerate(self) if isinstance(layer, IdProjection)]


class FluxIdCrossAttentions(nn.ModuleList):
    """The `pulid_ca.{k}` blocks, k in application order (double blocks first, then single blocks)."""

    def __init__(self, count: int = 20, config: FluxCrossAttentionConfig | None = None):
        config = config or FluxCrossAttentionConfig()
        super().__init__(
            PerceiverAttentionCA(dim=config.dim, dim_head=config.dim_head, heads=config.heads, kv_dim=config.kv_dim)
            for _ in range(count)
        )
        self.config = config

    @classmethod
    def for_transformer(cls, transformer: nn.Module, config: FluxCrossAttentionConfig | None = None) -> "FluxIdCrossAttentions":
        """Sized for a diffusers `FluxTransformer2DModel`: count from its block counts, `dim` from its width."""
        config = config or FluxCrossAttentionConfig()
        width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        if width != config.dim:
            config = FluxCrossAttentionConfig(dim=width, dim_head=config.dim_head, heads=config.heads, kv_dim=config.kv_dim)
        return cls(flux_ca_count(len(transformer.transformer_blocks), len(transformer.single_transformer_blocks)), config)


@dataclass
class PulidWeights:
    """What one official file holds, ready to use: the ID encoder and the injection layers."""

    family: str  # "sdxl" or "flux"
    path: Path
    encoder: IDFormer
    injection: nn.Module  # SdxlIdLayers (SDXL) or FluxIdCrossAttentions (FLUX)
    counts: dict = field(default_factory=dict)  # tensors per part, for logs and the UI

    @property
    def tag(self) -> str:
        """A short identity for cache keys and infotext: the file name."""
        return self.path.name


# -- finding and reading ---------------------------------------------------------------------------


def _family_name(family) -> str:
    return str(getattr(family, "value", family))


def find_pulid_file(models_dir: str | Path, family, filename: str | None = None) -> Path:
    """The PuLID file for `family` in `models_dir/pulid/` (or `filename` there, when given).

    Raises ModelNotFound naming the file(s) and the folder `models/pulid/`.
    """
    family = _family_name(family)
    if family not in DEFAULT_FILES and filename is None:
        raise ModelLoadError(f"PuLID works with SDXL and FLUX.1 models only, not {FAMILY_LABELS.get(family, family)}.")
    folder = Path(models_dir) / PULID_FOLDER
    candidates = (filename,) if filename else DEFAULT_FILES[family]
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    wanted = " or ".join(candidates)
    raise ModelNotFound(
        f"PuLID weights not found: put {wanted} in the folder models/{PULID_FOLDER}/ (looked in {folder})."
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a `.safetensors` file (or a `.bin`/`.pt` torch file), unchanged, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFound(f"PuLID weights not found: {path.name} is not in the folder models/{PULID_FOLDER}/ (looked for {path}).")
    return read_torch_file(path, "PuLID")


def detect_pulid_family(keys, filename: str = "the file") -> str:
    """"sdxl" or "flux" from the checkpoint's top-level key prefixes; ModelLoadError otherwise."""
    prefixes = {key.split(".", 1)[0] for key in keys}
    for family, (encoder, injection) in PREFIXES.items():
        if encoder in prefixes and injection in prefixes:
            if family == "sdxl" and any(key.startswith("id_adapter.body.") for key in keys):
                raise ModelLoadError(
                    f"{filename} is a PuLID v1 file (pulid_v1.bin, an older ID encoder), which this app does not "
                    f"support: download {SDXL_FILE} into models/{PULID_FOLDER}/ instead."
                )
            return family
    shown = ", ".join(sorted(prefixes)[:6]) or "no tensors"
    raise ModelLoadError(
        f"{filename} is not a PuLID weights file: expected the keys id_adapter.* and id_adapter_attn_layers.* "
        f"(SDXL, {SDXL_FILE}) or pulid_encoder.* and pulid_ca.* (FLUX.1, {FLUX_FILES[0]}); found {shown}."
    )


def split_by_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{"id_adapter": {"latents": ...}, ...}: as the official loader, split at the first dot."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        module, _, rest = key.partition(".")
        parts.setdefault(module, {})[rest] = tensor
    return parts


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], prefix: str, filename: str) -> None:
    load_strict(module, state, filename, f"PuLID layout under {prefix}.*")


# -- loading ---------------------------------------------------------------------------------------


def load_pulid_weights(path: str | Path, model_family, *, unet: nn.Module | None = None,
                       transformer: nn.Module | None = None, encoder_config: IDFormerConfig | None = None,
                       ca_config: FluxCrossAttentionConfig | None = None,
                       dtype: torch.dtype | None = torch.float32) -> PulidWeights:
    """Load an official PuLID file for a model of `model_family` ("sdxl" / "flux" or a Family).

    SDXL needs the `unet` (its `attn_processors` order keys the ID layers; a `meta` UNet is enough);
    FLUX takes the `transformer` for the CA count and width (FLUX.1 sizes when None). Modules are
    built on `meta` and take the file's tensors (strict), then are cast to `dtype` (None keeps the
    file's dtype). float32 is the official SDXL v1.1 precision: its encoder and ID projections run in
    fp32, only their outputs are cast to the UNet's dtype. The hooks cast what they need themselves.
    """
    path = Path(path)
    family = _family_name(model_family)
    if family not in PREFIXES:
        raise ModelLoadError(f"PuLID works with SDXL and FLUX.1 models only, not {FAMILY_LABELS.get(family, family)}.")
    started = time.perf_counter()
    state = read_state_dict(path)
    file_family = detect_pulid_family(state.keys(), path.name)
    if file_family != family:
        suggestion = SDXL_FILE if family == "sdxl" else FLUX_FILES[0]
        raise ModelLoadError(
            f"{path.name} is a PuLID file for {FAMILY_LABELS[file_family]}, but the loaded model is "
            f"{FAMILY_LABELS[family]}: use {suggestion} (in models/{PULID_FOLDER}/) with {FAMILY_LABELS[family]} models."
        )
    parts = split_by_prefix(state)
    encoder_prefix, injection_prefix = PREFIXES[family]
    extra = sorted(set(parts) - {encoder_prefix, injection_prefix})
    if extra:
        raise ModelLoadError(f"{path.name} has keys outside the official PuLID layout: {', '.join(p + '.*' for p in extra)}.")

    config = encoder_config or IDFormerConfig()
    with torch.device("meta"):
        encoder = IDFormer(config)
        if family == "sdxl":
            if unet is None:
                raise ValueError("loading PuLID SDXL weights needs the UNet: its attn_processors order keys the ID layers")
            injection = SdxlIdLayers.for_unet(unet, id_dim=config.output_dim)
        elif transformer is not None:
            injection = FluxIdCrossAttentions.for_transformer(transformer, _with_kv_dim(ca_config, config.output_dim))
        else:
            injection = FluxIdCrossAttentions(flux_ca_count(), _with_kv_dim(ca_config, config.output_dim))
    _load_strict(encoder, parts[encoder_prefix], encoder_prefix, path.name)
    _load_strict(injection, parts[injection_prefix], injection_prefix, path.name)
    if dtype is not None:
        encoder.to(dtype)
        injection.to(dtype)
    counts = {encoder_prefix: len(parts[encoder_prefix]), injection_prefix: len(parts[injection_prefix])}
    log.info("PuLID %s: %s loaded in %.2f s (%s)", FAMILY_LABELS[family], path.name, time.perf_counter() - started,
             ", ".join(f"{k} {v} tensors" for k, v in counts.items()))
    return PulidWeights(family, path, encoder.eval(), injection.eval(), counts)


def _with_kv_dim(config: FluxCrossAttentionConfig | None, id_dim: int) -> FluxCrossAttentionConfig:
    config = config or FluxCrossAttentionConfig()
    if config.kv_dim == id_dim:
        return config
    return FluxCrossAttentionConfig(dim=config.dim, dim_head=config.dim_head, heads=config.heads, kv_dim=id_dim)


def official_state_dict(weights_family: str, encoder: IDFormer, injection: nn.Module) -> dict[str, torch.Tensor]:
    """The inverse of `load_pulid_weights`: tensors under the official key names (for tests and export)."""
    encoder_prefix, injection_prefix = PREFIXES[weights_family]
    state = {f"{encoder_prefix}.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"{injection_prefix}.{k}": v for k, v in injection.state_dict().items()})
    return state
