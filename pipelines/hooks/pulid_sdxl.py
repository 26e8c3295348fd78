"""PuLID v1.1 identity injection for SDXL: an ID branch in every UNet cross-attention.

Source: ToTheBeginning/PuLID `pulid/attention_processor.py` (`IDAttnProcessor2_0`) and
`pulid/pipeline_v1_1.py`. In each cross-attention (`attn2`), after the text attention and before
`to_out`, the processor adds

    hidden += id_scale * SDPA(query, id_to_k([id, 0 * num_zero]), id_to_v([id, 0 * num_zero]))

or, with ortho, only the part of the ID attention orthogonal to the text attention (v1), or that
part plus the projection re-weighted by how much attention the first 5 ID tokens get (v2).

Classifier-free guidance: the official v1.1 sampler calls the UNet twice per step, the positive
prompt with the face's ID embedding and the negative prompt with the unconditional one (the encoder
run on zeros). diffusers' SDXL pipeline runs both in one call, batch = [uncond rows, cond rows].
The processor gives the first half the unconditional ID and the second half the face's ID. Every
operation of the UNet and of the ID branch (the ortho sums included: they run over each sample's
own tokens) is per sample, so this is the official computation, batched; only floating-point
reduction order may differ. A `HookContext.branch` of "cond" / "uncond" (a loop that calls the
UNet per branch) applies that branch's ID to the whole batch.

Exactness: before `start_step`, at `id_scale == 0`, and for processors without ID weights, the
original processor runs unchanged, so PuLID off and weight 0 give the same bytes. Detach puts the
original processor objects back.

Example:
    weights = load_pulid_weights(path, "sdxl", unet=pipe.unet)
    identity = encode_identity(weights.encoder, id_conds, vit_hidden_states)
    hook = PulidSdxlHook(weights.injection, identity.cond, identity.uncond, PulidSdxlConfig(id_scale=0.8))
    with attached(pipe, [hook], context):
        pipe(..., callback_on_step_end=...)  # the callback advances context.step_index
"""
from __future__ import annotations

import hashlib
from dataclasses import astuple, dataclass

import torch
import torch.nn.functional as F

from pipelines.choices import ORTHO_MODES
from pipelines.face.pulid_weights import IdProjection, SdxlIdLayers
from pipelines.hooks.base import HookContext

PULID_SDXL_HOOK = "pulid_sdxl"
ORTHO_V2_ID_TOKENS = 5  # official v2 sums the attention on the first 5 ID tokens


@dataclass(frozen=True)
class PulidSdxlConfig:
    """Controls of the official v1.1 app.

    - `id_scale` (0-5, default 0.8): strength of the ID branch. Higher = more likeness, less
      prompt following; 0 = exactly PuLID off.
    - `num_zero` (0-80, default 20): zero tokens appended to the ID tokens. They take attention
      away from the ID: more = more editable (style, expression), less likeness.
    - `ortho` ("off" / "v1" / "v2", default "v2"): add only the part of the ID attention that is
      orthogonal to the text attention, so the ID disturbs the prompt less. v2 keeps some of the
      parallel part, in proportion to the attention on the ID tokens: the official default.
    - `start_step` (default 0): no ID before this denoising step; later starts leave the layout
      to the prompt (not an official v1.1 control; 0 is the official behaviour).
    """

    id_scale: float = 0.8
    num_zero: int = 20
    ortho: str = "v2"
    start_step: int = 0

    def __post_init__(self):
        if self.ortho not in ORTHO_MODES:
            raise ValueError(f"ortho must be one of {', '.join(ORTHO_MODES)}, got {self.ortho!r}")
        if self.num_zero < 0 or self.start_step < 0:
            raise ValueError("num_zero and start_step must be >= 0")


class PulidSdxlState:
    """What the processors read during a generation; one per attached hook."""

    def __init__(self, hook: "PulidSdxlHook", pipe, context: HookContext):
        self.hook = hook
        self.pipe = pipe
        self.context = context
        self.steps_with_id: set[int] = set()

    def active(self) -> bool:
        config = self.hook.config
        return config.id_scale != 0 and self.context.step_index >= config.start_step

    def row_layout(self, batch: int) -> list[tuple[str, int]]:
        """[(branch, rows), ...] in batch order: which ID each row of this UNet call gets."""
        branch = self.context.branch
        if branch in ("cond", "uncond"):
            return [(branch, batch)]
        if _pipeline_batches_cfg(self.pipe):
            if batch % 2:
                raise RuntimeError(f"PuLID: a classifier-free-guidance batch must be even, got {batch} rows")
            return [("uncond", batch // 2), ("cond", batch // 2)]
        return [("cond", batch)]


def _pipeline_batches_cfg(pipe) -> bool:
    """Whether the running diffusers pipeline concatenated [uncond, cond] into one UNet call."""
    try:
        return bool(pipe.do_classifier_free_guidance)
    except AttributeError:  # the property reads state set by __call__; outside a call there is no CFG batch
        return False


class IdAttnProcessor:
    """A cross-attention processor with PuLID's ID branch; wraps the processor it replaced.

    Not an `nn.Module` on purpose: the ID weights stay out of the UNet's `state_dict()` and out of
    its `.to()` moves. The ID keys/values are constant during a generation, so they are computed
    once per branch (as the official code computes them each call: fp32 projections, then cast to
    the query's dtype) and reused every step.
    """

    def __init__(self, original, projection: IdProjection, state: PulidSdxlState):
        self.original = original
        self.projection = projection
        self.state = state
        self._id_kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # branch -> (key, value), on the weights
        self._placed: dict = {}  # (branch, device, dtype) -> (key, value)

    def _branch_kv(self, branch: str, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._placed.get((branch, device, dtype))
        if cached is not None:
            return cached
        if branch not in self._id_kv:
            embedding = self.state.hook.embeddings[branch]
            weight = self.projection.id_to_k.weight
            tokens = embedding.to(weight.device, weight.dtype)
            num_zero = self.state.hook.config.num_zero
            if num_zero:
                tokens = torch.cat((tokens, tokens.new_zeros(tokens.shape[0], num_zero, tokens.shape[-1])), dim=1)
            with torch.no_grad():
                self._id_kv[branch] = (self.projection.id_to_k(tokens), self.projection.id_to_v(tokens))
        key, value = self._id_kv[branch]
        placed = (key.to(device, dtype), value.to(device, dtype))
        self._placed[(branch, device, dtype)] = placed
        return placed

    def _batch_kv(self, batch: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = [], []
        for branch, rows in self.state.row_layout(batch):
            key, value = self._branch_kv(branch, device, dtype)
            if key.shape[0] not in (1, rows):
                raise RuntimeError(f"PuLID: an ID embedding of batch {key.shape[0]} cannot serve {rows} images")
            keys.append(key.expand(rows, -1, -1))
            values.append(value.expand(rows, -1, -1))
        return torch.cat(keys), torch.cat(values)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if not self.state.active():
            # Exactly the call diffusers' Attention.forward would have made to the original processor.
            if temb is not None:
                kwargs["temb"] = temb
            return self.original(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=attention_mask, **kwargs)
        self.state.steps_with_id.add(self.state.context.step_index)
        # From here: diffusers' AttnProcessor2_0 (which the official IDAttnProcessor2_0 copies), with
        # the ID branch inserted before `to_out`.
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        id_key, id_value = self._batch_kv(batch_size, query.device, query.dtype)
        id_key = id_key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        id_value = id_value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        id_hidden_states = F.scaled_dot_product_attention(query, id_key, id_value, attn_mask=None, dropout_p=0.0, is_causal=False)
        id_hidden_states = id_hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        id_hidden_states = id_hidden_states.to(query.dtype)
        config = self.state.hook.config
        hidden_states = add_id_attention(hidden_states, id_hidden_states, config.id_scale, config.ortho, query, id_key)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def add_id_attention(hidden: torch.Tensor, id_hidden: torch.Tensor, id_scale: float, ortho: str,
                     query: torch.Tensor, id_key: torch.Tensor) -> torch.Tensor:
    """hidden + id_scale * (ID attention, or its ortho part), as the official processor.

    The projection of the ID attention on the text attention is per channel, summed over the
    tokens of each sample (dim -2). v2 re-adds (a - 1) x that projection, where `a` is, per query
    token, the softmax attention on the first 5 ID tokens of the unscaled logits, averaged over
    heads. Ortho runs in float32 and returns the input dtype.
    """
    if ortho == "off":
        return hidden + id_scale * id_hidden
    dtype = hidden.dtype
    hidden = hidden.to(torch.float32)
    id_hidden = id_hidden.to(torch.float32)
    projection = (
        torch.sum(hidden * id_hidden, dim=-2, keepdim=True) / torch.sum(hidden * hidden, dim=-2, keepdim=True) * hidden
    )
    if ortho == "v1":
        orthogonal = id_hidden - projection
    else:
        attn_map = query @ id_key.transpose(-2, -1)
        attn_mean = attn_map.softmax(dim=-1).mean(dim=1)
        attn_mean = attn_mean[:, :, :ORTHO_V2_ID_TOKENS].sum(dim=-1, keepdim=True)
        orthogonal = id_hidden + (attn_mean - 1) * projection
    return (hidden + id_scale * orthogonal).to(dtype)


def embedding_digest(tensor: torch.Tensor | None) -> str | None:
    """A short content hash of an ID embedding, for cache keys."""
    if tensor is None:
        return None
    data = tensor.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16] + str(tuple(tensor.shape))


class PulidSdxlHook:
    """Swaps the UNet's cross-attention processors for `IdAttnProcessor` for one generation.

    `id_layers` are the loaded `id_adapter_attn_layers` (built for this UNet's processor order);
    `cond` / `uncond` the ID embeddings (1, 32, 2048), e.g. from `encode_identity`.
    """

    name = PULID_SDXL_HOOK

    def __init__(self, id_layers: SdxlIdLayers, cond: torch.Tensor, uncond: torch.Tensor,
                 config: PulidSdxlConfig | None = None, weights_tag: str = ""):
        if cond is None or uncond is None:
            raise ValueError("PulidSdxlHook needs both ID embeddings: the face's (cond) and the unconditional one")
        self.id_layers = id_layers
        self.embeddings = {"cond": _as_tokens(cond), "uncond": _as_tokens(uncond)}
        self.config = config or PulidSdxlConfig()
        self.weights_tag = weights_tag
        self._originals: dict[str, object] = {}  # attention module path -> original processor
        self._unet = None
        self._state: PulidSdxlState | None = None

    def cache_key(self):
        """Everything this hook changes in the latents (for the exact-repeat latent cache)."""
        return (self.weights_tag, astuple(self.config), embedding_digest(self.embeddings["cond"]),
                embedding_digest(self.embeddings["uncond"]))

    def attach(self, pipe, context: HookContext) -> None:
        if self._unet is not None:
            raise RuntimeError("PulidSdxlHook is already attached; detach it first (pipelines.hooks.attached does).")
        unet = pipe.unet
        names = list(unet.attn_processors)
        if names != self.id_layers.processor_names:
            raise ValueError(
                f"these PuLID ID layers were built for a UNet with {len(self.id_layers.processor_names)} attention "
                f"processors in another order; this UNet has {len(names)}: load the PuLID weights for this model"
            )
        state = PulidSdxlState(self, pipe, context)
        try:
            for index in self.id_layers.cross_attention_indices():
                path = names[index].removesuffix(".processor")
                attention = unet.get_submodule(path)
                self._originals[path] = attention.processor
                attention.set_processor(IdAttnProcessor(attention.processor, self.id_layers[index], state))
        except Exception:
            self._restore(unet)
            raise
        self._unet, self._state = unet, state
        context.stats["pulid"] = {"processors": len(self._originals), "start_step": self.config.start_step,
                                  "steps_with_id": 0}

    def detach(self, pipe) -> None:
        if self._unet is None:
            return
        state = self._state
        state.context.stats.setdefault("pulid", {})["steps_with_id"] = len(state.steps_with_id)
        self._restore(self._unet)
        self._unet, self._state = None, None

    def _restore(self, unet) -> None:
        for path, original in self._originals.items():
            unet.get_submodule(path).set_processor(original)
        self._originals = {}


def _as_tokens(embedding: torch.Tensor) -> torch.Tensor:
    """(32, 2048) or (B, 32, 2048) -> (B, 32, 2048), detached."""
    embedding = embedding.detach()
    return embedding.unsqueeze(0) if embedding.ndim == 2 else embedding
