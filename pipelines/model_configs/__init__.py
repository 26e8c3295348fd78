"""Bundled diffusers-format component configs (JSON only, no weights, no tokenizer files).

Single-file checkpoints (`v1-5-pruned-emaonly.safetensors`, `sd_xl_base_1.0.safetensors`, ...) carry
weights but no configs; diffusers' `from_single_file(..., config=<dir>, local_files_only=True)` reads
the component configs from one of these folders so that nothing is fetched from a hub.

- `sd15/`: Stable Diffusion 1.5 (UNet, VAE, CLIP ViT-L/14 text encoder, PNDM scheduler); the
  safety checker and feature extractor are listed as `[null, null]`.
- `sdxl/`: Stable Diffusion XL base 1.0 (UNet, VAE, CLIP ViT-L/14 + OpenCLIP ViT-bigG/14 text
  encoders, Euler scheduler).

Neither folder holds tokenizer files: callers pass `tokenizer=` / `tokenizer_2=` explicitly.
"""
from __future__ import annotations

from pathlib import Path

_ROOT = Path(__file__).resolve().parent

FAMILIES = ("sd15", "sdxl")


def config_dir(family: str) -> Path:
    """The config folder for `family` ("sd15" or "sdxl"); ValueError for anything else."""
    family = getattr(family, "value", family)  # accept a str-valued enum such as pipelines.families.Family
    if family not in FAMILIES:
        raise ValueError(f"No bundled single-file configs for model family {family!r}; expected one of {', '.join(FAMILIES)}.")
    return _ROOT / family
