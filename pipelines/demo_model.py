"""The embedded demo model: a tiny SD 1.5-architecture pipeline with seeded random weights.

It lets a fresh install generate end to end (text encode, denoise, VAE decode, save) with no
download. Its images are colourful noise, and every place that lists it says so.
"""
from __future__ import annotations

import shutil
from pathlib import Path

DEMO_VERSION = "v1"
SEED = 1234


def demo_model_dir(cache_dir: Path) -> Path:
    return cache_dir / f"demo-model-{DEMO_VERSION}"


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


def ensure_demo_model(cache_dir: Path) -> Path:
    """Build the demo model once and keep it on disk; later starts load it like any diffusers folder."""
    target = demo_model_dir(cache_dir)
    if (target / "model_index.json").is_file():
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    build_tiny_sd15_pipeline().save_pretrained(staging)
    # Rename last, so an interrupted build is never mistaken for a finished one.
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
