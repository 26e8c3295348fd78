"""The trained demo model's parts, in the SD 1.5 pipeline layout at 1/4 of its width.

- VAE: AutoencoderKL, 4 levels (8x down: 128x128 images <-> 16x16x4 latents), no mid-block
  attention (so it trains on crops and runs at any size).
- UNet: UNet2DConditionModel, 4 levels (16, 8, 4, 2 latent pixels), cross-attention in the three
  upper levels, so DeepCache has a deep part to skip.
- Text: a small CLIPTextModel and a CLIPTokenizer whose vocabulary is the scene words (whole-word
  merges) plus the 512 byte symbols, so any prompt still tokenizes.
- Scheduler: v-prediction, zero-terminal-SNR betas, trailing timestep spacing (epsilon prediction
  never learnt position here; zero terminal SNR makes the first step start from pure noise, as at
  inference).
"""
from __future__ import annotations

import json
from pathlib import Path

from pipelines.tokenizers import _bytes_to_unicode

TEXT_WIDTH = 128
MAX_TOKENS = 77
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing", steps_offset=0,
)


def vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary: byte symbols (with and without `</w>`), one token per scene word, specials."""
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    known = set(vocab)
    for word in words:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:  # merge left to right: ((a b) c) d</w>
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1]] + parts[2:]
            if parts[0] not in known:
                known.add(parts[0])
                vocab.append(parts[0])
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    unique_merges = list(dict.fromkeys(merges))
    return {token: index for index, token in enumerate(vocab)}, unique_merges


def build_tokenizer(words: list[str]):
    """The CLIPTokenizer; each scene word is one token (a word that an earlier merge split gets a closing merge)."""
    from transformers import CLIPTokenizer

    vocab, merges = vocab_and_merges(words)
    for _ in range(8):
        tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], pad_token="<|endoftext|>")
        split = [tokenizer.tokenize(word) for word in words]
        split = [pieces for pieces in split if len(pieces) > 1]
        if not split:
            break
        for pieces in split:  # join the pieces left to right, after every earlier merge
            while len(pieces) > 1:
                merges.append(f"{pieces[0]} {pieces[1]}")
                pieces = [pieces[0] + pieces[1]] + pieces[2:]
                if pieces[0] not in vocab:
                    vocab = _insert_before_specials(vocab, pieces[0])
    tokenizer.model_max_length = MAX_TOKENS
    return tokenizer


def _insert_before_specials(vocab: dict[str, int], token: str) -> dict[str, int]:
    tokens = [t for t in vocab if not t.startswith("<|")] + [token, "<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def build_text_encoder(tokenizer, seed: int):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=TEXT_WIDTH * 4, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, hidden_act="quick_gelu", projection_dim=TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_vae(seed: int, channels=(16, 32, 64, 64), groups: int = 1):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=channels, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, layers_per_block=1, norm_num_groups=groups, sample_size=128, mid_block_add_attention=False,
    )


def build_unet(seed: int, channels=(64, 96, 128, 128), layers: int = 1, heads: int = 8):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, block_out_channels=channels, layers_per_block=layers,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        # diffusers reads `attention_head_dim` as the number of heads here (a naming kept from SD 1.5's config)
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=heads, norm_num_groups=8,
    )


def build_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(**SCHEDULER_CONFIG)


def assemble(vae, text_encoder, tokenizer, unet):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=build_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_fp16(pipe, folder: Path, facts: dict | None = None) -> None:
    """The diffusers folder, every weight as fp16 safetensors (plus `training.json` with `facts`)."""
    import torch

    pipe.to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    pipe.to(torch.float32)
    if facts is not None:
        (Path(folder) / "training.json").write_text(json.dumps(facts, indent=2))
