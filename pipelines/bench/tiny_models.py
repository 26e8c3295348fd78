"""Tiny seeded-random diffusers pipelines: SD 1.5, SDXL and FLUX.1, built offline (tests and CPU benchmarks).

Every builder returns a real diffusers pipeline of the family's architecture, scaled down so a
generation takes a fraction of a second on a CPU. Nothing is downloaded: the CLIP tokenizers come
from `pipelines.tokenizers` (the vocabulary bundled with open-clip-torch), and FLUX's T5 tokenizer
is a small Unigram model built here. `save_tiny_pipeline` writes a diffusers folder that
`from_pretrained(..., local_files_only=True)` reads back, the way the app loads models.

Sizes: SD 1.5 runs at 64x64 (its minimum); SDXL and FLUX at 256x256, the minimum their family
limits allow (`pipelines.families`). All three VAEs have a down-scale factor of 8, like the real ones.
"""
from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("sd15", "sdxl", "flux")
SAMPLERS = {"sd15": "Euler", "sdxl": "Euler", "flux": "Flow Euler"}
# Generation sizes the tests use: the smallest each family accepts.
SIZES = {"sd15": 64, "sdxl": 256, "flux": 256}

# SDXL: the two text encoders must differ in width (diffusers tells them apart by width when it
# converts a single file), and the projection must differ from the second encoder's width.
XL_TE1 = 32
XL_TE2 = 64
XL_PROJ = 48
XL_TIME = 8

CLIP_VOCAB = 49408  # the real CLIP vocabulary: the bundled tokenizer's ids must index the embedding

FLUX_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,  # 16 latent channels x 2x2 packed patches
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)


def seeded(module: torch.nn.Module, seed: int, scale: float = 0.2) -> torch.nn.Module:
    """Overwrite every parameter with seeded noise (small, so activations stay finite in fp32)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return module.eval()


def _clip_config(hidden: int, projection: int, act: str = "quick_gelu", vocab: int = CLIP_VOCAB):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def tiny_vae(seed: int, latent_channels: int = 4, **extra):
    """A 4-level AutoencoderKL (factor 8) with very few channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=256,
        **extra,
    ).eval()


# -- SD 1.5 ----------------------------------------------------------------------------------------


def build_tiny_sd15(seed: int = 1234):
    """The demo model's architecture (a scaled-down SD 1.5), with its own seed."""
    from pipelines.demo_model import build_tiny_sd15_pipeline

    return build_tiny_sd15_pipeline(seed=seed)


# -- SDXL ------------------------------------------------------------------------------------------


def build_tiny_sdxl(seed: int = 100):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from pipelines.tokenizers import build_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        transformer_layers_per_block=(1, 1),
        attention_head_dim=(4, 8),
        cross_attention_dim=XL_TE1 + XL_TE2,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=XL_TIME,
        projection_class_embeddings_input_dim=XL_PROJ + 6 * XL_TIME,
        norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(_clip_config(XL_TE1, XL_TE1))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(XL_TE2, XL_PROJ, act="gelu"))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=seeded(tiny_vae(seed + 1), seed + 1),
        text_encoder=seeded(text_encoder, seed + 2),
        text_encoder_2=seeded(text_encoder_2, seed + 3),
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(pad_token="!"),
        unet=seeded(unet, seed + 4),
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


# -- FLUX.1 ----------------------------------------------------------------------------------------

T5_WORDS = (
    "a an the of and with in on portrait photo cat dog red blue green light dark face woman man "
    "old young smiling studio painting landscape x test prompt hello world"
).split()


def build_t5_tokenizer():
    """A tiny T5 (Unigram) tokenizer: a few words and the single letters, scored, plus the specials."""
    from transformers import T5Tokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, -1.0 - i * 0.01) for i, w in enumerate(T5_WORDS)]
    pieces += [("\u2581", -5.0)] + [(c, -6.0) for c in letters] + [("\u2581" + c, -6.5) for c in letters]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def build_tiny_flux_transformer(seed: int = 200):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return seeded(FluxTransformer2DModel(**FLUX_TRANSFORMER), seed)


def build_tiny_flux(seed: int = 200):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from pipelines.tokenizers import build_clip_tokenizer

    t5_tokenizer = build_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config(FLUX_TRANSFORMER["pooled_projection_dim"], 32))
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer) + 8,
            d_model=FLUX_TRANSFORMER["joint_attention_dim"],
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    vae = tiny_vae(seed + 3, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                   use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=seeded(vae, seed + 3),
        text_encoder=seeded(text_encoder, seed + 1),
        tokenizer=build_clip_tokenizer(),
        text_encoder_2=seeded(text_encoder_2, seed + 2),
        tokenizer_2=t5_tokenizer,
        transformer=build_tiny_flux_transformer(seed + 4),
    )


BUILDERS = {"sd15": build_tiny_sd15, "sdxl": build_tiny_sdxl, "flux": build_tiny_flux}


# -- writing ---------------------------------------------------------------------------------------


def save_tiny_pipeline(pipe, folder: Path) -> Path:
    """`save_pretrained` as safetensors; returns the folder (which holds model_index.json)."""
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    assert (folder / "model_index.json").is_file()
    return folder
