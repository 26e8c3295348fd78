"""Loading one catalog entry into a diffusers pipeline on the CPU, offline.

Every path uses diffusers' own loaders with `local_files_only=True`; single files get their
component configs from `pipelines/model_configs/` (or a `<file>.config/` folder beside them) and
their tokenizers from `pipelines.tokenizers`, so nothing is fetched from a hub.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pipelines.catalog import ModelEntry
from pipelines.errors import LikenessError, ModelLoadError
from pipelines.families import Family


def pipeline_class(family: Family):
    from diffusers import FluxPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    return {Family.SD15: StableDiffusionPipeline, Family.SDXL: StableDiffusionXLPipeline, Family.FLUX: FluxPipeline}[family]


def _missing_tokenizers(family: Family, folder: Path) -> dict:
    """Tokenizers a UNet folder lacks, built from the bundled CLIP vocabulary."""
    from pipelines.tokenizers import build_clip_tokenizer

    built = {}
    if family in (Family.SD15, Family.SDXL) and not (folder / "tokenizer").is_dir():
        built["tokenizer"] = build_clip_tokenizer()
    if family is Family.SDXL and not (folder / "tokenizer_2").is_dir():
        built["tokenizer_2"] = build_clip_tokenizer(pad_token="!")
    if family is Family.FLUX:
        _check_flux_parts(folder)
    return built


def _check_flux_parts(folder: Path) -> None:
    """FLUX's T5 tokenizer and encoders cannot be built here: name the missing part and where it goes."""
    for part in ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "vae", "scheduler"):
        if not (folder / part).is_dir():
            raise ModelLoadError(f"The FLUX.1 folder {folder} has no {part}/ subfolder; copy it from the FLUX.1 diffusers repository into {folder / part}.")


def _sd_extras(family: Family) -> dict:
    # The SD 1.5 safety checker is a 1.2 GB CLIP model that is not part of the generation path.
    return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False} if family is Family.SD15 else {}


def single_file_config_dir(path: Path, family: Family) -> Path:
    """A `<name>.config/` folder beside the file wins (unusual architectures); else the bundled one."""
    sidecar = path.with_name(path.stem + ".config")
    if (sidecar / "model_index.json").is_file():
        return sidecar
    from pipelines.model_configs import config_dir

    return config_dir(family.value)


def load_pipeline(entry: ModelEntry, dtype: torch.dtype):
    """Load on the CPU in `dtype`. Raises ModelLoadError with a message the user can act on."""
    if not entry.usable:
        raise ModelLoadError(entry.problem)
    if entry.family is None:
        raise ModelLoadError(f"{entry.name}: unknown model family.")
    try:
        pipe = _load(entry, dtype)
    except LikenessError:
        raise
    except Exception as error:  # diffusers/safetensors raise many types; the user needs one message
        if "meta tensor" in str(error):
            raise ModelLoadError(_incomplete(entry, "some of its weights")) from error
        if "size mismatch" in str(error) or "ignore_mismatched_sizes" in str(error):
            # Keep diffusers' first "size mismatch for X: ... shape ..." line, drop its advice
            # (low_cpu_mem_usage / ignore_mismatched_sizes) that a user of the app cannot follow.
            detail = next((line.strip() for line in str(error).splitlines() if "mismatch" in line), "")
            detail = detail.split(" If you want to instead overwrite")[0].split(" please make sure to pass")[0]
            raise ModelLoadError(
                f"{entry.path.name}: its tensors do not have the shapes of the {entry.family.spec.label} architecture "
                f"(a different variant or size; {detail[:300]}). If it is a non-standard model, put its diffusers "
                f"config files in a folder named {entry.path.stem}.config next to it."
            ) from error
        raise ModelLoadError(f"Could not load {entry.name} ({entry.path}): {error.__class__.__name__}: {str(error)[:400]}") from error
    check_complete(pipe, entry)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _incomplete(entry: ModelEntry, what: str) -> str:
    return (f"{entry.path.name} lacks {what} that the {entry.family.spec.label} architecture needs: "
            f"the file is incomplete or of another architecture.")


def check_complete(pipe, entry: ModelEntry) -> None:
    """diffusers leaves a weight missing from a single file on the meta device without a word."""
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            missing = [key for key, tensor in component.named_parameters() if tensor.device.type == "meta"]
            if missing:
                raise ModelLoadError(_incomplete(entry, f"{len(missing)} {name} weights (e.g. {missing[0]})"))


def _load(entry: ModelEntry, dtype: torch.dtype):
    family = entry.family
    cls = pipeline_class(family)
    common = {"dtype": dtype, "local_files_only": True}
    if entry.format in ("diffusers", "hf-cache", "demo"):
        return cls.from_pretrained(str(entry.path), **common, **_missing_tokenizers(family, entry.path), **_sd_extras(family))
    if entry.format == "single-file":
        from pipelines.tokenizers import build_clip_tokenizer

        tokenizers = {"tokenizer": build_clip_tokenizer()}
        if family is Family.SDXL:
            tokenizers["tokenizer_2"] = build_clip_tokenizer(pad_token="!")
        config = single_file_config_dir(entry.path, family)
        return cls.from_single_file(str(entry.path), config=str(config), **common, **tokenizers, **_sd_extras(family),
                                    **_inpainting_unet(entry.path, config, dtype))
    if entry.format == "flux-transformer":
        from diffusers import FluxTransformer2DModel

        base = entry.base_path
        _check_flux_parts(base)
        transformer = FluxTransformer2DModel.from_single_file(str(entry.path), config=str(base), subfolder="transformer", **common)
        return cls.from_pretrained(str(base), transformer=transformer, **common)
    raise ModelLoadError(f"{entry.name}: unsupported format {entry.format}.")


def _inpainting_unet(path: Path, config: Path, dtype: torch.dtype) -> dict:
    """An inpainting checkpoint's 9-channel UNet, loaded on its own (the config folders say 4 channels);
    {} for a text-to-image checkpoint."""
    from pipelines.checkpoints import INPAINTING_CHANNELS, read_pickle_keys, read_safetensors_header, unet_in_channels

    if path.suffix.lower() == ".safetensors":
        header = read_safetensors_header(path)
    else:
        header = read_pickle_keys(path)
    if unet_in_channels(header) != INPAINTING_CHANNELS:
        return {}
    from diffusers import UNet2DConditionModel

    return {"unet": UNet2DConditionModel.from_single_file(str(path), config=str(config), subfolder="unet", in_channels=INPAINTING_CHANNELS,
                                                          dtype=dtype, local_files_only=True)}


def pipeline_bytes(pipe) -> int:
    """Bytes of all weights and buffers of the pipeline's torch modules."""
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in component.parameters())
            total += sum(t.numel() * t.element_size() for t in component.buffers())
    return total
