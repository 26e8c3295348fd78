"""PuLID-FLUX identity injection: ID cross-attention after every 2nd double and every 4th single block.

Source: ToTheBeginning/PuLID `flux/model.py` (`Flux.forward`), `flux/sampling.py` (`denoise`) and
`pulid/pipeline_flux.py`. After double block i with i % 2 == 0 and after single block i with
i % 4 == 0 (FLUX.1: 10 + 10 = 20 blocks), the image tokens get

    img = img + id_weight * pulid_ca[k](id, img)

In diffusers 0.42 both `FluxTransformerBlock` and `FluxSingleTransformerBlock` return
`(encoder_hidden_states, hidden_states)` with `hidden_states` the image tokens only (the single
block splits its joint sequence itself), so the update goes to output[1] of either kind: for the
single blocks that is the official "image-token slice". It runs before the ControlNet residual, as
in the official order.

Mechanics: `register_forward_hook` handles on the blocks (plus one pre-hook on the transformer
that tells the branch apart), removed on detach; no forward is patched. diffusers' cache hooks
(`transformer.enable_cache(...)`) patch `forward` inside `Module.__call__`, so they run inside these
hooks. When a cache serves a block from its cache (First Block Cache / MagCache report
`should_compute == False`, and skipped blocks hand back their input tensor) no ID is added there:
the cached residual already carries the ID updates of the step it was computed on.

Branches: FLUX.1-dev is guidance-distilled; the official app only makes a second,
negative call per step for "true CFG", with the unconditional ID (or none). diffusers' FluxPipeline
also calls the transformer first for the prompt and then, with true CFG, for the negative prompt,
passing the same latents: a second call on the same latents in the same step is the uncond call.
A `HookContext.branch` of "cond" / "uncond" overrides this.

The CA blocks run on the device and in the dtype of the image tokens (the transformer's compute
dtype): a copy is made there on attach (and again if an offloaded transformer runs elsewhere);
the loaded master weights are never converted, and the copies are dropped on detach.
"""
from __future__ import annotations

from dataclasses import astuple, dataclass

import torch
from torch import nn

from pipelines.face.pulid_weights import (FLUX_DOUBLE_INTERVAL, FLUX_SINGLE_INTERVAL, FluxIdCrossAttentions,
                                          flux_ca_count)
from pipelines.hooks.base import HookContext
from pipelines.hooks.pulid_sdxl import embedding_digest

PULID_FLUX_HOOK = "pulid_flux"
COMPUTE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class PulidFluxConfig:
    """Controls of the official PuLID-FLUX app.

    - `id_weight` (0-3, default 1): strength of the ID updates; 0 = exactly PuLID off.
    - `start_step` (0-10, default 0): first denoising step that gets the ID. The first steps set
      the layout; starting at 4 keeps the prompt's composition and realism (advised for photos),
      0-1 gives the strongest likeness (advised for stylised images).
    """

    id_weight: float = 1.0
    start_step: int = 0

    def __post_init__(self):
        if self.start_step < 0:
            raise ValueError("start_step must be >= 0")


def _placed_copy(module: nn.Module, device, dtype) -> nn.Module:
    """`module` on `device` in `dtype` without touching `module` (itself when it already is)."""
    tensors = list(module.parameters()) + list(module.buffers())
    if all(t.device == torch.device(device) and t.dtype == dtype for t in tensors):
        return module
    with torch.device("meta"):
        clone = FluxIdCrossAttentions(len(module), module.config)
    clone.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in module.state_dict().items()},
                          strict=True, assign=True)
    return clone.eval()


def _served_from_cache(block: nn.Module, hidden_in, hidden_out) -> bool:
    """Whether a diffusers cache hook skipped this block's computation on this call."""
    if hidden_out is hidden_in:
        return True  # skipped blocks of First Block Cache / MagCache return their input
    registry = getattr(block, "_diffusers_hook", None)
    for hook in getattr(registry, "hooks", {}).values():
        manager = getattr(hook, "state_manager", None)
        if manager is None:
            continue
        try:
            state = manager.get_state()
        except Exception:  # no cache context set: nothing cached
            continue
        if getattr(state, "should_compute", True) is False:
            return True
    return False


class PulidFluxHook:
    """Adds PuLID's ID cross-attention to a diffusers `FluxTransformer2DModel` for one generation.

    `cross_attentions` are the loaded `pulid_ca` blocks; `cond` the face's ID embedding (1, 32, 2048);
    `uncond` the unconditional one, used only on a true-CFG negative call (None: no ID there, as
    the official app when it did not compute one).
    """

    name = PULID_FLUX_HOOK

    def __init__(self, cross_attentions: FluxIdCrossAttentions, cond: torch.Tensor, uncond: torch.Tensor | None = None,
                 config: PulidFluxConfig | None = None, weights_tag: str = ""):
        if cond is None:
            raise ValueError("PulidFluxHook needs the face's ID embedding (cond)")
        self.cross_attentions = cross_attentions
        self.embeddings = {"cond": _as_tokens(cond), "uncond": None if uncond is None else _as_tokens(uncond)}
        self.config = config or PulidFluxConfig()
        self.weights_tag = weights_tag
        self._handles: list = []
        self._context: HookContext | None = None
        self._placed: nn.Module | None = None
        self._placed_ids: dict = {}
        self._embedding: torch.Tensor | None = None  # the ID of the call in progress (None: no ID this call)
        self._last_call: tuple | None = None  # (step, latents) of the previous transformer call
        self._steps_with_id: set[int] = set()
        self._ca_calls = 0

    def cache_key(self):
        return (self.weights_tag, astuple(self.config), embedding_digest(self.embeddings["cond"]),
                embedding_digest(self.embeddings["uncond"]))

    def attach(self, pipe, context: HookContext) -> None:
        if self._handles:
            raise RuntimeError("PulidFluxHook is already attached; detach it first (pipelines.hooks.attached does).")
        transformer = pipe.transformer
        doubles, singles = transformer.transformer_blocks, transformer.single_transformer_blocks
        expected = flux_ca_count(len(doubles), len(singles))
        if len(self.cross_attentions) != expected:
            raise ValueError(f"this FLUX transformer needs {expected} PuLID CA blocks "
                             f"({len(doubles)} double, {len(singles)} single); the loaded weights have {len(self.cross_attentions)}")
        self._context = context
        parameter = next(transformer.parameters())
        if parameter.dtype in COMPUTE_DTYPES and parameter.device.type != "meta":
            self._placed = _placed_copy(self.cross_attentions, parameter.device, parameter.dtype)
        # else (fp8 storage with layerwise casting, meta): placed on the first call, from the image tokens
        blocks = [b for i, b in enumerate(doubles) if i % FLUX_DOUBLE_INTERVAL == 0]
        blocks += [b for i, b in enumerate(singles) if i % FLUX_SINGLE_INTERVAL == 0]
        try:
            self._handles.append(transformer.register_forward_pre_hook(self._on_transformer_call, with_kwargs=True))
            for index, block in enumerate(blocks):
                self._handles.append(block.register_forward_hook(self._block_hook(index), with_kwargs=True))
        except Exception:
            self.detach(pipe)
            raise
        context.stats["pulid"] = {"ca_blocks": len(blocks), "start_step": self.config.start_step,
                                  "steps_with_id": 0, "ca_calls": 0}

    def detach(self, pipe) -> None:
        for handle in self._handles:
            handle.remove()
        if self._context is not None:
            self._context.stats.setdefault("pulid", {}).update(steps_with_id=len(self._steps_with_id), ca_calls=self._ca_calls)
        self._handles = []
        self._context = None
        self._placed = None
        self._placed_ids = {}
        self._embedding = None
        self._last_call = None
        self._steps_with_id = set()
        self._ca_calls = 0

    # -- per call ----------------------------------------------------------------------------------

    def _on_transformer_call(self, module, args, kwargs):
        context = self._context
        latents = kwargs.get("hidden_states", args[0] if args else None)
        step = context.step_index
        if context.branch in ("cond", "uncond"):
            branch = context.branch
        else:
            repeat = self._last_call is not None and self._last_call[0] == step and self._last_call[1] is latents
            branch = "uncond" if repeat else "cond"
        self._last_call = (step, latents)
        active = self.config.id_weight != 0 and step >= self.config.start_step
        self._embedding = self.embeddings[branch] if active else None
        if self._embedding is not None:
            self._steps_with_id.add(step)
        return None

    def _block_hook(self, index: int):
        def hook(block, args, kwargs, output):
            if self._embedding is None:
                return None
            hidden_in = kwargs.get("hidden_states", args[0] if args else None)
            encoder_hidden_states, hidden_states = output
            if _served_from_cache(block, hidden_in, hidden_states):
                return None
            ca = self._cross_attention(index, hidden_states)
            identity = self._placed_id(hidden_states)
            self._ca_calls += 1
            hidden_states = hidden_states + self.config.id_weight * ca(identity, hidden_states)
            return encoder_hidden_states, hidden_states

        return hook

    def _cross_attention(self, index: int, hidden_states: torch.Tensor) -> nn.Module:
        placed = self._placed
        if placed is None or next(placed.parameters()).device != hidden_states.device \
                or next(placed.parameters()).dtype != hidden_states.dtype:
            # An offloaded transformer runs on another device than its parameters rested on at attach.
            placed = self._placed = _placed_copy(self.cross_attentions, hidden_states.device, hidden_states.dtype)
            self._placed_ids = {}
        return placed[index]

    def _placed_id(self, hidden_states: torch.Tensor) -> torch.Tensor:
        key = (id(self._embedding), hidden_states.device, hidden_states.dtype)
        placed = self._placed_ids.get(key)
        if placed is None:
            placed = self._placed_ids[key] = self._embedding.to(hidden_states.device, hidden_states.dtype)
        return placed


def _as_tokens(embedding: torch.Tensor) -> torch.Tensor:
    embedding = embedding.detach()
    return embedding.unsqueeze(0) if embedding.ndim == 2 else embedding
