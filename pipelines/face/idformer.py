"""PuLID's ID encoder (IDFormer) and the FLUX ID cross-attention block, in the official layout.

Source: ToTheBeginning/PuLID `pulid/encoders_transformer.py` (IDFormer, PerceiverAttention,
PerceiverAttentionCA, FeedForward). Parameter names and shapes are the official ones, so the
`id_adapter.*` part of `pulid_v1.1.safetensors` (SDXL) and the `pulid_encoder.*` part of
`pulid_flux_v0.9.x.safetensors` load with `strict=True`; the maths (the stable softmax scaling,
softmax in float32) is the official one too.

IDFormer in one paragraph: a perceiver resampler. The 1280-d ID condition (ArcFace 512 + normalised
EVA-CLIP 768) of each reference photo is mapped to 5 ID tokens; 32 learned queries are concatenated
with them ("latents"). Five EVA-CLIP hidden states (shallow to deep) are each mapped by their own
MLP and used, together with the ID tokens, as the context of two layers each (10 layers). The 32
query tokens are projected to 2048-d: the ID embedding the UNet / FLUX cross-attentions read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

NUM_VIT_SCALES = 5  # EVA-CLIP hidden states after blocks 3, 7, 11, 15, 19


@dataclass(frozen=True)
class IDFormerConfig:
    """Sizes of an IDFormer. The defaults are the official ones (both SDXL v1.1 and FLUX v0.9.x).

    `id_cond_dim`, `vit_dim` and `mapping_dim` are fixed at 1280 / 1024 / 1024 in the official code;
    they are fields here only so tests can build a tiny encoder with the same structure.
    """

    dim: int = 1024
    depth: int = 10  # a multiple of 5: each ViT scale feeds depth // 5 layers
    dim_head: int = 64
    heads: int = 16
    num_id_token: int = 5  # ID tokens per reference photo
    num_queries: int = 32  # output tokens
    output_dim: int = 2048
    ff_mult: int = 4
    id_cond_dim: int = 1280  # ArcFace 512 + EVA-CLIP 768
    vit_dim: int = 1024  # EVA02-CLIP-L width
    mapping_dim: int = 1024  # hidden width of the input MLPs

    def __post_init__(self):
        if self.depth % NUM_VIT_SCALES:
            raise ValueError(f"IDFormer depth must be a multiple of {NUM_VIT_SCALES}, got {self.depth}")

    @classmethod
    def tiny(cls, output_dim: int = 24) -> "IDFormerConfig":
        """The official structure at toy widths, for fast CPU tests."""
        return cls(dim=32, depth=5, dim_head=8, heads=2, num_id_token=5, num_queries=4, output_dim=output_dim,
                   ff_mult=2, id_cond_dim=12, vit_dim=16, mapping_dim=16)


def stable_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dim_head: int) -> torch.Tensor:
    """Softmax attention as the official PuLID code writes it: q and k each scaled by dim_head^-1/4
    ("more stable with f16 than dividing afterwards"), softmax in float32, back to the input dtype."""
    scale = 1 / math.sqrt(math.sqrt(dim_head))
    weight = (q * scale) @ (k * scale).transpose(-2, -1)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return weight @ v


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, _ = x.shape
    return x.view(batch, length, heads, -1).transpose(1, 2)  # (batch, heads, length, dim_head)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, dim_head = x.shape
    return x.permute(0, 2, 1, 3).reshape(batch, length, heads * dim_head)


class PerceiverAttention(nn.Module):
    """IDFormer layer attention: the latents attend to [context, latents] (official `PerceiverAttention`)."""

    def __init__(self, *, dim: int, dim_head: int = 64, heads: int = 8, kv_dim: int | None = None):
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner_dim = dim_head * heads
        self.norm1 = nn.LayerNorm(kv_dim or dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(kv_dim or dim, inner_dim * 2, bias=False)
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))
        return self.to_out(_merge_heads(stable_attention(q, k, v, self.dim_head)))


class PerceiverAttentionCA(nn.Module):
    """PuLID-FLUX ID cross-attention: image tokens (queries, `dim`) attend to the ID tokens (`kv_dim`).

    `forward(id_tokens, image_tokens)` returns the update added to the image tokens (official
    argument order: `ca(id, img)`). Defaults are the official FLUX.1 sizes.
    """

    def __init__(self, *, dim: int = 3072, dim_head: int = 128, heads: int = 16, kv_dim: int | None = 2048):
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner_dim = dim_head * heads
        self.norm1 = nn.LayerNorm(kv_dim or dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(kv_dim or dim, inner_dim * 2, bias=False)
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        # An ID batch of 1 broadcasts over the image batch, as in the official code.
        q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))
        return self.to_out(_merge_heads(stable_attention(q, k, v, self.dim_head)))


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """Keys `.0` LayerNorm, `.1` up, `.3` down (no biases), as the official `FeedForward`."""
    inner = int(dim * mult)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False))


def _input_mlp(width_in: int, hidden: int, width_out: int) -> nn.Sequential:
    """Linear, LN, LeakyReLU, Linear, LN, LeakyReLU, Linear: keys .0 .1 .3 .4 .6."""
    return nn.Sequential(
        nn.Linear(width_in, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(),
        nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(),
        nn.Linear(hidden, width_out),
    )


class IDFormer(nn.Module):
    """The PuLID ID encoder. `IDFormer()` is the official size; `IDFormer.tiny()` is for tests.

    forward(id_cond, vit_hidden_states):
    - `id_cond`: (B, 1280) for one reference photo, or (B, N, 1280) for N photos stacked on dim 1;
    - `vit_hidden_states`: 5 tensors (B, T, 1024); with N photos, each is the N photos' hidden
      states concatenated on the token axis (T = 577 * N);
    - returns (B, 32, 2048): always 32 tokens; N photos give 5 * N ID tokens inside the encoder.
    """

    def __init__(self, config: IDFormerConfig | None = None):
        super().__init__()
        config = config or IDFormerConfig()
        self.config = config
        self.num_id_token = config.num_id_token
        self.dim = config.dim
        self.num_queries = config.num_queries
        self.layers_per_scale = config.depth // NUM_VIT_SCALES
        scale = config.dim ** -0.5

        self.latents = nn.Parameter(torch.randn(1, config.num_queries, config.dim) * scale)
        self.proj_out = nn.Parameter(scale * torch.randn(config.dim, config.output_dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PerceiverAttention(dim=config.dim, dim_head=config.dim_head, heads=config.heads),
                feed_forward(config.dim, config.ff_mult),
            ])
            for _ in range(config.depth)
        )
        for i in range(NUM_VIT_SCALES):
            setattr(self, f"mapping_{i}", _input_mlp(config.vit_dim, config.mapping_dim, config.dim))
        self.id_embedding_mapping = _input_mlp(config.id_cond_dim, config.mapping_dim, config.dim * config.num_id_token)

    @classmethod
    def official(cls) -> "IDFormer":
        return cls(IDFormerConfig())

    @classmethod
    def tiny(cls, output_dim: int = 24) -> "IDFormer":
        return cls(IDFormerConfig.tiny(output_dim))

    def forward(self, id_cond: torch.Tensor, vit_hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(vit_hidden_states) != NUM_VIT_SCALES:
            raise ValueError(f"IDFormer needs {NUM_VIT_SCALES} EVA-CLIP hidden states, got {len(vit_hidden_states)}")
        latents = self.latents.repeat(id_cond.size(0), 1, 1)
        photos = id_cond.shape[1] if id_cond.ndim == 3 else 1
        id_tokens = self.id_embedding_mapping(id_cond).reshape(-1, self.num_id_token * photos, self.dim)
        latents = torch.cat((latents, id_tokens), dim=1)
        for i in range(NUM_VIT_SCALES):
            vit_feature = getattr(self, f"mapping_{i}")(vit_hidden_states[i])
            context = torch.cat((id_tokens, vit_feature), dim=1)
            for attn, ff in self.layers[i * self.layers_per_scale:(i + 1) * self.layers_per_scale]:
                latents = attn(context, latents) + latents
                latents = ff(latents) + latents
        return latents[:, :self.num_queries] @ self.proj_out


def placed_encoder(encoder: IDFormer, device: torch.device | str, dtype: torch.dtype) -> IDFormer:
    """`encoder` on `device` in `dtype` without touching it (itself when it already is there).

    The loaded IDFormer stays on the CPU in the file's float32 for the whole session; a FLUX run
    on a GPU computes with a bfloat16 copy (the official precision) that is dropped afterwards, so
    the kept weights are never rounded and never left on the device.
    """
    device = torch.device(device)
    tensors = list(encoder.parameters()) + list(encoder.buffers())
    if all(t.device == device and t.dtype == dtype for t in tensors):
        return encoder
    with torch.device("meta"):
        clone = IDFormer(encoder.config)
    clone.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in encoder.state_dict().items()}, strict=True, assign=True)
    return clone.eval().requires_grad_(False)


@dataclass(frozen=True)
class IdentityEmbedding:
    """The ID embeddings a PuLID hook injects: `cond` for the face, `uncond` for the negative branch."""

    cond: torch.Tensor  # (1, 32, 2048)
    uncond: torch.Tensor  # (1, 32, 2048): the encoder run on all-zero inputs (not a zero tensor)


def encode_identity(encoder: IDFormer, id_conds: Sequence[torch.Tensor],
                    vit_hidden_states: Sequence[Sequence[torch.Tensor]]) -> IdentityEmbedding:
    """ID embeddings of one identity from one or more reference photos, as the official v1.1 code.

    `id_conds[j]` is photo j's (1, 1280) or (1280,) condition and `vit_hidden_states[j]` its 5
    hidden states (1, 577, 1024). Photos are stacked to (1, N, 1280) and their hidden states
    concatenated on the token axis. The unconditional embedding is the encoder run on zeros shaped
    like the first photo alone: a 2-d (1, 1280) condition and single-photo hidden states.
    """
    if not id_conds or len(id_conds) != len(vit_hidden_states):
        raise ValueError("encode_identity needs one ID condition and one set of hidden states per photo")
    conds = [c.reshape(1, -1) for c in id_conds]
    stacked = torch.stack(conds, dim=1)
    hidden = [torch.cat([photo[scale] for photo in vit_hidden_states], dim=1) for scale in range(NUM_VIT_SCALES)]
    uncond_hidden = [torch.zeros_like(h) for h in vit_hidden_states[0]]
    return IdentityEmbedding(
        cond=encoder(stacked, hidden),
        uncond=encoder(torch.zeros_like(conds[0]), uncond_hidden),
    )
