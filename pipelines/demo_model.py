"""The demo model the app lists when no real model is installed.

Two kinds live here:
- The trained demo (`pipelines/demo/weights/`, trained by `python app.py train-demo`): a small
  SD 1.5-layout model meant to draw simple shapes and faces from plain-word prompts, loaded from the
  repo's files as they are (nothing built or trained at start). Used when
  `pipelines.demo.SHIP_TRAINED_DEMO` is on; a missing or damaged file is named, with the fix.
- The random demo (`build_tiny_sd15_pipeline`, `ensure_random_demo`): seeded random weights
  (colourful noise), built in seconds into the cache folder on first use. The app's demo while the
  flag is off; the test suite's always (smaller, no attention at full latent resolution: fast at 512 px).
`LIKENESS_DEMO_DIR` points the app's demo entry at any demo folder (the test suite and the checker set it).
"""
from __future__ import annotations

import json
import logging
import os
import struct
import shutil
from pathlib import Path

log = logging.getLogger("likeness")
DEMO_VERSION = "v1"
SEED = 1234


DEMO_DIR_ENV = "LIKENESS_DEMO_DIR"
RESTORE_HINT = "restore the shipped files with `git checkout -- pipelines/demo/weights` (or reinstall Likeness)"
# Every file the trained demo needs; a folder missing one is reported by name.
DEMO_FILES = (
    "model_index.json", "scheduler/scheduler_config.json", "tokenizer/tokenizer_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
)


def random_demo_dir(cache_dir: Path) -> Path:
    return cache_dir / f"demo-model-{DEMO_VERSION}"


def demo_model_dir(cache_dir: Path | None = None) -> Path:
    """The folder the app's demo entry loads: $LIKENESS_DEMO_DIR, else the shipped trained weights
    (when `pipelines.demo.SHIP_TRAINED_DEMO` is on), else the random demo in `cache_dir`."""
    from pipelines.demo import SHIP_TRAINED_DEMO, WEIGHTS_DIR

    override = os.environ.get(DEMO_DIR_ENV)
    if override:
        return Path(override)
    if SHIP_TRAINED_DEMO:
        return WEIGHTS_DIR
    if cache_dir is None:
        raise ValueError("the random demo lives in the cache folder: pass cache_dir")
    return random_demo_dir(cache_dir)


def _shipped_or_chosen() -> bool:
    """True when the demo folder is given (shipped weights or $LIKENESS_DEMO_DIR), not built here."""
    from pipelines.demo import SHIP_TRAINED_DEMO

    return SHIP_TRAINED_DEMO or bool(os.environ.get(DEMO_DIR_ENV))


def demo_problem(folder: Path) -> str | None:
    """Why the demo folder cannot be loaded (a missing, empty or cut-short file, named), else None.

    Cheap: reads only JSON files and the safetensors headers, never the weights. The random demo is
    built on first use, so a missing one is no problem.
    """
    if not _shipped_or_chosen():
        return None
    if not folder.is_dir():
        return f"The demo model folder is missing: {folder}. To get it back, {RESTORE_HINT}."
    for name in DEMO_FILES:
        path = folder / name
        if not path.is_file():
            return f"The demo model is damaged: {path} is missing. To repair it, {RESTORE_HINT}."
        try:
            if name.endswith(".json"):
                json.loads(path.read_text(encoding="utf-8"))
            else:
                _check_safetensors(path)
        except (OSError, ValueError, UnicodeDecodeError, struct.error) as error:
            return f"The demo model is damaged: {path} cannot be read ({error}). To repair it, {RESTORE_HINT}."
    return None


def _check_safetensors(path: Path) -> None:
    """The header parses and the file is as long as the header says (a cut-short download or a Git LFS
    pointer fails here)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError("too short to be a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise ValueError("not a safetensors file (header longer than the file)")
        header = json.loads(handle.read(length))
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + length + end > size:
        raise ValueError(f"cut short: {size:,} bytes of {8 + length + end:,}")


def build_tiny_sd15_pipeline(
    seed: int = SEED,
    unet_channels=(32, 64, 64),
    cross_attention_dim: int = 64,
    text_layers: int = 2,
    sd15_block_layout: bool = False,
):
    """A StableDiffusionPipeline with the SD 1.5 architecture scaled down (VAE factor 8, 4 latent channels).

    `sd15_block_layout=True` keeps SD 1.5's block types (cross-attention in every level but the
    deepest, two layers per block), as the mid-size benchmark model needs; the default demo layout
    skips attention at full latent resolution so it stays fast on a CPU.
    """
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipelines.tokenizers import build_clip_tokenizer

    torch.manual_seed(seed)
    levels = len(unet_channels)
    if sd15_block_layout:
        down = ("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",)
        up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1)
    else:
        # Attention only below full latent resolution (as SDXL does): self-attention over 64x64
        # tokens would make this tiny model as slow per step as a much bigger one.
        down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
        up = ("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=unet_channels,
        layers_per_block=2 if sd15_block_layout else 1,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=cross_attention_dim,
            intermediate_size=cross_attention_dim * 2,
            num_hidden_layers=text_layers,
            num_attention_heads=max(1, cross_attention_dim // 32),
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=cross_attention_dim,
        )
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=build_clip_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def ensure_demo_model(cache_dir: Path | None = None) -> Path:
    """The demo folder: the shipped or chosen one checked (a ModelLoadError naming a missing or damaged
    file), else the random demo, built once into `cache_dir`."""
    from pipelines.errors import ModelLoadError

    if not _shipped_or_chosen():
        return ensure_random_demo(cache_dir)
    folder = demo_model_dir(cache_dir)
    problem = demo_problem(folder)
    if problem:
        raise ModelLoadError(problem)
    return folder


def ensure_random_demo(cache_dir: Path) -> Path:
    """Build the random demo once and keep it on disk (tests, benchmarks); later calls load it."""
    target = random_demo_dir(cache_dir)
    if (target / "model_index.json").is_file():
        return target
    log.info("No demo model yet: building the tiny random demo into %s (once)…", target)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    build_tiny_sd15_pipeline().save_pretrained(staging)
    # Rename last, so an interrupted build is never mistaken for a finished one.
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
