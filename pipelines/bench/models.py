"""The benchmark's models, written as diffusers folders into a temporary models folder.

- `bench-mid-sd15`: a mid-size SD-like pipeline (UNet 64/128/256/256 with SD 1.5's block layout,
  cross-attention 768, a 2-layer CLIP text encoder of width 768, the demo's small VAE), seeded random
  weights. Big enough that a 512x512 step does real work, small enough for a CPU.
- `bench-sd15-full` / `bench-sdxl-full` (CUDA only): the real SD 1.5 and SDXL architectures from the
  bundled configs (`pipelines.model_configs`), seeded random weights (they cost the same compute as
  trained ones), saved in fp16, the dtype the manager runs them in on a GPU. `full_pipeline` builds
  them in memory only (the GPU suite, which writes no multi-GB files except for its disk-load row).
"""
from __future__ import annotations

import contextlib
import gc
import json
from pathlib import Path

import torch

MID_NAME = "bench-mid-sd15"
SD15_FULL_NAME = "bench-sd15-full"
SDXL_FULL_NAME = "bench-sdxl-full"
MID_SEED = 4321
MID_UNET_CHANNELS = (64, 128, 256, 256)
MID_CROSS_ATTENTION = 768
MID_TEXT_LAYERS = 2


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build_mid_size(models_dir: Path) -> tuple[Path, str]:
    """Build and save the mid-size model; returns its folder and a one-line description."""
    from pipelines.demo_model import build_tiny_sd15_pipeline

    pipe = build_tiny_sd15_pipeline(
        seed=MID_SEED, unet_channels=MID_UNET_CHANNELS, cross_attention_dim=MID_CROSS_ATTENTION,
        text_layers=MID_TEXT_LAYERS, sd15_block_layout=True,
    )
    params = {name: sum(p.numel() for p in module.parameters())
              for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    folder = models_dir / MID_NAME
    pipe.save_pretrained(folder)
    del pipe
    gc.collect()
    description = (
        f"UNet {'/'.join(map(str, MID_UNET_CHANNELS))} (SD 1.5 block layout, 2 layers/block, cross-attn {MID_CROSS_ATTENTION}), "
        f"CLIP text {MID_TEXT_LAYERS} layers x {MID_CROSS_ATTENTION}; params: "
        + ", ".join(f"{name} {count / 1e6:.1f} M" for name, count in params.items())
    )
    return folder, description


def full_configs_present(family: str) -> str | None:
    """None when the bundled config folder for `family` is complete, else why not."""
    try:
        from pipelines.model_configs import config_dir
    except ImportError as error:
        return f"pipelines.model_configs is not importable ({error})"
    try:
        folder = config_dir(family)
    except ValueError as error:
        return str(error)
    parts = ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json"]
    if family == "sdxl":
        parts.append("text_encoder_2/config.json")
    missing = [part for part in parts if not (folder / part).is_file()]
    if missing:
        return f"bundled configs missing in {folder}: {', '.join(missing)}"
    return None


def full_pipeline(family: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """The full SD 1.5 or SDXL architecture from the bundled configs, seeded random weights, built
    directly on `device` in `dtype` (random init of billions of weights is seconds on a GPU, minutes
    on a CPU; building in `dtype` never holds an fp32 copy). Returns the diffusers pipeline."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipelines.model_configs import config_dir
    from pipelines.tokenizers import build_clip_tokenizer

    source = config_dir(family)
    scheduler = _scheduler_from(source)
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(source / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(source / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_json_file(source / "text_encoder" / "config.json"))
        text_encoder_2 = None
        if family == "sdxl":
            text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_json_file(source / "text_encoder_2" / "config.json"))
    for module in (unet, vae, text_encoder, text_encoder_2):
        if module is not None:
            cast(module, dtype)
    if family == "sdxl":
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=build_clip_tokenizer(),
            tokenizer_2=build_clip_tokenizer(pad_token="!"), unet=unet, scheduler=scheduler,
            force_zeros_for_empty_prompt=True, add_watermarker=False,
        )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=build_clip_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Create parameters in `dtype` (always restores the previous default)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """eval(), and `dtype` for any floating tensor created with an explicit dtype (skipped when none was:
    diffusers warns about every cast)."""
    tensors = list(module.parameters()) + list(module.buffers())
    if any(t.is_floating_point() and t.dtype != dtype for t in tensors):
        module.to(dtype=dtype)
    return module.eval()


def parameter_counts(pipe) -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters())
            for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}


def build_full(family: str, models_dir: Path, device: torch.device, seed: int = 0) -> tuple[Path, str]:
    """The full SD 1.5 or SDXL architecture from the bundled configs, random weights, saved in fp16.

    Built on `device` in fp16 (the dtype the manager runs it in on a GPU), saved from host memory.
    """
    pipe = full_pipeline(family, device, torch.float16, seed)
    pipe.to("cpu")
    counts = parameter_counts(pipe)
    folder = models_dir / (SDXL_FULL_NAME if family == "sdxl" else SD15_FULL_NAME)
    pipe.save_pretrained(folder)
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    label = "SD 1.5" if family == "sd15" else "SDXL"
    description = f"full {label} architecture (bundled configs), fp16 random weights; params: " + ", ".join(
        f"{part} {count / 1e6:.0f} M" for part, count in counts.items())
    return folder, description


def _scheduler_from(source: Path):
    import diffusers

    config_path = source / "scheduler" / "scheduler_config.json"
    class_name = json.loads(config_path.read_text()).get("_class_name", "EulerDiscreteScheduler")
    scheduler_class = getattr(diffusers, class_name, diffusers.EulerDiscreteScheduler)
    return scheduler_class.from_config(scheduler_class.load_config(source / "scheduler"))
