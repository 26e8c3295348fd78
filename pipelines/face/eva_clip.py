"""The EVA02-CLIP-L-14-336 image tower, written here because timm and open_clip need torchvision.

PuLID feeds the parsed face crop to this tower and keeps two things: the 768-d image embedding and
five hidden states (B, 577, 1024), the *inputs* of blocks 4, 8, 12, 16 and 20. Attribute names
follow the official `visual.*` keys of `EVA02_CLIP_L_336_psz14_s6B.pt`, so that file loads key for
key. The architecture (EVA-02 "L", CLIP variant):

- 336 px input, 14 px patches: 24 x 24 = 576 patch tokens + 1 class token = 577;
- width 1024, 24 blocks, 16 heads of 64;
- attention with separate q/k/v projections (bias on q and v only), 2-D rotary position embedding
  on the patch tokens, and a LayerNorm on the attention output before its projection ("sub-LN");
- SwiGLU feed-forward, hidden int(1024 * 2.6667) = 2730, with a LayerNorm before its output layer;
- every LayerNorm uses eps 1e-6; the class token goes through `norm` and the 1024 -> 768 `head`.

The rotary tables are not learned: they are recomputed here and not stored as parameters. The
official file carries them as buffers (once at `rope.` and again under every block's attention,
because the module is shared); the loader checks them against ours and then drops them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# OpenAI CLIP's normalisation: EVA-CLIP was trained with it.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class EvaVisionConfig:
    image_size: int = 336
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    head_width: int = 64
    mlp_hidden: int = 2730  # int(1024 * 2.6667): the SwiGLU width of the official config
    embed_dim: int = 768  # the CLIP embedding the head projects to
    rope_pretrain_grid: int = 16  # the grid the rotary frequencies were trained at (224 / 14)
    hidden_every: int = 4  # keep the input of every 4th block ...
    hidden_until: int = 20  # ... up to block 20: blocks 4, 8, 12, 16, 20 -> five states

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens(self) -> int:
        return self.grid * self.grid + 1

    @property
    def hidden_blocks(self) -> tuple[int, ...]:
        return tuple(range(self.hidden_every, min(self.hidden_until, self.layers - 1) + 1, self.hidden_every))


def rotary_tables(config: EvaVisionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (grid*grid, head_width) for the patch tokens, in row-major order.

    Half of each head's channels rotate with the patch's row, the other half with its column. Each
    frequency covers an adjacent pair of channels, and positions are rescaled from the 24-patch grid
    to the 16-patch grid of pre-training (EVA-02's "interpolated frequencies").
    """
    half = config.head_width // 2
    inverse = 1.0 / (10000 ** (torch.arange(0, half, 2).float() / half))
    positions = torch.arange(config.grid).float() / config.grid * config.rope_pretrain_grid
    angles = torch.repeat_interleave(torch.outer(positions, inverse), 2, dim=-1)  # (grid, half)
    by_row = angles[:, None, :].expand(config.grid, config.grid, half)
    by_column = angles[None, :, :].expand(config.grid, config.grid, half)
    table = torch.cat([by_row, by_column], dim=-1).reshape(config.grid * config.grid, config.head_width)
    return table.cos(), table.sin()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): the 90-degree turn of each channel pair."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the patch tokens of (B, heads, 1 + patches, head_width); the class token has no position."""
    patches = x[:, :, 1:]
    rotated = patches * cos + rotate_pairs(patches) * sin
    return torch.cat([x[:, :, :1], rotated.type_as(x)], dim=2)


class EvaAttention(nn.Module):
    def __init__(self, config: EvaVisionConfig):
        super().__init__()
        width = config.width
        self.heads = config.heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        # The key has no bias (a bias on k would shift every logit of a query equally: softmax ignores it).
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.inner_attn_ln = nn.LayerNorm(width, eps=1e-6)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, tokens, self.heads, -1).transpose(1, 2)

        q = heads(F.linear(x, self.q_proj.weight, self.q_bias))
        k = heads(F.linear(x, self.k_proj.weight))
        v = heads(F.linear(x, self.v_proj.weight, self.v_bias))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, -1)
        return self.proj(self.inner_attn_ln(out))


class SwiGLU(nn.Module):
    def __init__(self, config: EvaVisionConfig):
        super().__init__()
        self.w1 = nn.Linear(config.width, config.mlp_hidden)  # gate
        self.w2 = nn.Linear(config.width, config.mlp_hidden)  # value
        self.ffn_ln = nn.LayerNorm(config.mlp_hidden, eps=1e-6)
        self.w3 = nn.Linear(config.mlp_hidden, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))


class EvaBlock(nn.Module):
    def __init__(self, config: EvaVisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=1e-6)
        self.attn = EvaAttention(config)
        self.norm2 = nn.LayerNorm(config.width, eps=1e-6)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, config: EvaVisionConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, config.width, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)  # (B, grid*grid, width), row-major


class EvaVisionTower(nn.Module):
    """`visual` of EVA02-CLIP: pixels (B, 3, 336, 336), CLIP-normalised -> (embedding, hidden states)."""

    def __init__(self, config: EvaVisionConfig = EvaVisionConfig()):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.tokens, config.width))
        self.blocks = nn.ModuleList(EvaBlock(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width, eps=1e-6)
        self.head = nn.Linear(config.width, config.embed_dim)
        cos, sin = rotary_tables(config)
        # Not persistent: derived from the config, never read from (or written to) a checkpoint.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        size = self.config.image_size
        if tuple(pixels.shape[-2:]) != (size, size):
            raise ValueError(f"EVA-CLIP expects {size}x{size} pixels, got {tuple(pixels.shape[-2:])}")
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1) + self.pos_embed.to(x.dtype)
        cos, sin = self.rope_cos.to(x.dtype), self.rope_sin.to(x.dtype)
        keep = set(self.config.hidden_blocks)
        hidden = []
        for index, block in enumerate(self.blocks):
            if index in keep:
                hidden.append(x)
            x = block(x, cos, sin)
        return self.head(self.norm(x[:, 0])), hidden


def preprocess(image: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> bicubic resize to size x size, CLIP mean/std, as the official code does.

    The official pipelines call `torchvision.transforms.functional.resize(image, 336,
    InterpolationMode.BICUBIC)` on a float tensor with the torchvision they pin (0.15.2). There the
    default `antialias` resolves to False for tensors ("None (current default, which means False for
    Tensors and True for PIL)"; it became True only in 0.17), and the tensor path is
    `interpolate(mode="bicubic", align_corners=False, antialias=False)` with no clamping of float
    images. 512 -> 336 is a downscale, where antialiasing would change every pixel, so it is off here
    too: the weights were trained and are served on the aliased resize.
    """
    if tuple(image.shape[-2:]) != (size, size):
        image = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False, antialias=False)
    mean = torch.tensor(CLIP_MEAN, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return (image - mean) / std
