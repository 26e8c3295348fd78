"""DeepCache for UNet models (SD 1.5, SDXL): reuse the deep features between adjacent steps.

On a full step the whole UNet runs and the input of the up-path layer at the chosen skip branch is
kept. On a cached step only the shallow path runs, with the kept deep features standing in for
everything below it. The deep part changes little from one step to the next, so a 1:N schedule
(one full step, N-1 cached) costs little quality.

Branches count *layers* (a resnet with its attention), as the paper's and the reference package's
do: each UNet level has `layers_per_block + 1` skip positions. Branch b is level b // (L + 1),
position b % (L + 1): the cached step runs conv_in, the levels above, the first `position` layers
of that level's down block, then the last `position + 1` layers of its up block and every up block
above. Branch 0 is the shallowest skip path: conv_in, the very last up layer and conv_out (fastest,
lowest quality); higher branches run more layers (slower, closer to the uncached image).

Unlike the reference package, the state is reset at the start of every generation (and of every
batch), keys on the step index the generation loop reports, and never outlives a change of size,
batch or img2img strength. N = 1 runs every step in full: exactly the uncached image.

It attaches through diffusers' hook registry (a `ModelHook` on the UNet), never by replacing
`unet.forward`: whatever wraps the UNet already (accelerate's CPU-offload hook from
`enable_model_cpu_offload`, other diffusers hooks) still runs on a full step, and accelerate's
hook also runs around a cached step, so an offloaded UNet is on the GPU for both. Detaching
removes only this hook and leaves `forward` as it was.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from diffusers.hooks import HookRegistry, ModelHook

from pipelines.choices import DEEPCACHE_SCHEDULES as SCHEDULES
from pipelines.hooks.base import HookContext

DEEPCACHE_HOOK = "deepcache"


@dataclass(frozen=True)
class DeepCacheConfig:
    """- `interval` N: one full step, then N-1 cached ones. 1 = off. 2-3 keep quality close to the
      uncached image; 5 is about 3x faster with visible softening.
    - `branch`: which skip connection the shallow path ends at. 0 = shallowest, fastest; each higher
      branch runs one more layer on the down and the up path per cached step (slower, closer to the
      original). SD 1.5 and SDXL have 3 branches per UNet level.
    - `schedule`: "uniform" (every N-th step is full) or "quadratic" (full steps packed around
      `center`, the fraction of the run where features change fastest, and sparse at the ends),
      the paper's non-uniform 1:N.
    """

    interval: int = 3
    branch: int = 0
    schedule: str = "uniform"
    center: float = 0.5

    def __post_init__(self):
        if self.interval < 1:
            raise ValueError("DeepCache interval must be 1 (off) or more")
        if self.branch < 0:
            raise ValueError("DeepCache branch must be 0 or more")
        if self.schedule not in SCHEDULES:
            raise ValueError("DeepCache schedule must be 'uniform' or 'quadratic'")
        if not 0.0 <= self.center <= 1.0:
            raise ValueError("DeepCache center must be between 0 and 1")


def full_steps(total: int, config: DeepCacheConfig) -> set[int]:
    """The step indices (0-based) that run the whole UNet; step 0 always does."""
    if config.interval <= 1 or total <= 1:
        return set(range(total))
    count = max(1, math.ceil(total / config.interval))
    if config.schedule == "uniform":
        return {i for i in range(0, total, config.interval)}
    center = config.center * (total - 1)
    steps = {0}
    for k in range(count):
        u = -1 + 2 * k / max(count - 1, 1)  # -1 .. 1
        offset = math.copysign(u * u, u)  # quadratic spacing: dense near the centre
        reach = center if u < 0 else (total - 1 - center)
        steps.add(int(round(center + offset * reach)))
    return {s for s in steps if 0 <= s < total}


def positions_per_level(unet) -> int:
    """Skip positions per UNet level: one per down layer plus the level's input (= up layers)."""
    return len(unet.up_blocks[-1].resnets)


def deepest_branch(unet) -> int:
    """The highest branch: every level but the deepest one can be the shallow path's end."""
    return (len(unet.up_blocks) - 1) * positions_per_level(unet) - 1


def _attend(block, layer: int, hidden, attention: dict):
    if not getattr(block, "attentions", None):
        return hidden
    return block.attentions[layer](hidden, return_dict=False, **attention)[0]


def _down_layer(block, layer: int, hidden, emb, attention: dict):
    """One resnet (+ attention) of a down block, as the block's own forward runs it."""
    return _attend(block, layer, block.resnets[layer](hidden, emb), attention)


def _up_layer(block, layer: int, hidden, skip, emb, attention: dict):
    """One resnet (+ attention) of an up block, with its skip connection concatenated first."""
    return _attend(block, layer, block.resnets[layer](torch.cat([hidden, skip], dim=1), emb), attention)


class _UNetForward(ModelHook):
    """The diffusers registry entry: routes the UNet's calls to its DeepCacheHook."""

    _is_stateful = True

    def __init__(self, owner: "DeepCacheHook"):
        super().__init__()
        self.owner = owner

    def new_forward(self, module, *args, **kwargs):
        return self.owner._forward(*args, **kwargs)

    def reset_state(self, module):
        self.owner._reset()
        return module


class DeepCacheHook:
    """Attaches to `pipe.unet` for one generation; see the module docstring."""

    name = DEEPCACHE_HOOK

    def __init__(self, config: DeepCacheConfig | None = None):
        self.config = config or DeepCacheConfig()
        self._unet = None
        self._context: HookContext | None = None
        self._handle = None
        self._full: set[int] = set()
        self._kept: torch.Tensor | None = None
        self._kept_key: tuple | None = None  # (step, shape, dtype) of the call that filled the cache
        self._last_step: int | None = None
        self._registered: _UNetForward | None = None
        self._accelerate_inside = False  # an accelerate hook wraps the UNet below ours: call it on cached steps too
        self._restore: tuple[bool, bool] = (False, False)  # had an own `forward`, had a registry, before attach

    def cache_key(self):
        return (self.config.interval, self.config.branch, self.config.schedule, self.config.center)

    def attach(self, pipe, context: HookContext) -> None:
        unet = getattr(pipe, "unet", None)
        if unet is None:
            raise ValueError("DeepCache works on UNet models (SD 1.5, SDXL); use the block caches for FLUX.1.")
        if self._unet is not None:
            raise RuntimeError("DeepCacheHook is already attached; detach it first (pipelines.hooks.attached does).")
        deepest = deepest_branch(unet)
        if self.config.branch > deepest:
            raise ValueError(f"DeepCache branch {self.config.branch} is too deep for this UNet: use 0 to {deepest}.")
        if context.total_steps <= 1 and self.config.interval > 1:
            raise ValueError("DeepCache needs several steps; it cannot speed up a 1-step model.")
        self._unet, self._context = unet, context
        self._full = full_steps(context.total_steps, self.config)
        self._reset()
        self._level, self._position = divmod(self.config.branch, positions_per_level(unet))
        up = unet.up_blocks[len(unet.up_blocks) - 1 - self._level]
        first_layer = len(up.resnets) - 1 - self._position  # the first up layer a cached step runs
        if first_layer == 0:
            self._handle = up.register_forward_pre_hook(self._keep_block_input, with_kwargs=True)
        else:  # the output of the layer before it: its attention, or its resnet in a block without
            before = up.attentions[first_layer - 1] if getattr(up, "attentions", None) else up.resnets[first_layer - 1]
            self._handle = before.register_forward_hook(self._keep_layer_output)
        self._restore = ("forward" in unet.__dict__, hasattr(unet, "_diffusers_hook"))
        registry = HookRegistry.check_if_exists_or_initialize(unet)
        if registry.get_hook(DEEPCACHE_HOOK) is not None:
            self._handle.remove()
            self._unet = self._context = self._handle = None
            raise RuntimeError("This UNet already has a DeepCache hook (from another DeepCacheHook); detach that one first.")
        self._accelerate_inside = getattr(unet, "_hf_hook", None) is not None
        self._registered = _UNetForward(self)
        registry.register_hook(self._registered, DEEPCACHE_HOOK)
        context.stats[self.name] = {"full_steps": 0, "cached_steps": 0}

    def detach(self, pipe) -> None:
        if self._unet is None:
            return
        unet = self._unet
        self._handle.remove()
        registry = unet._diffusers_hook
        registry.remove_hook(DEEPCACHE_HOOK, recurse=False)
        had_forward, had_registry = self._restore
        if not registry.hooks:  # leave the module as attach found it: no own `forward`, no empty registry
            own = unet.__dict__.get("forward")
            if not had_forward and getattr(own, "__func__", None) is type(unet).forward and getattr(own, "__self__", None) is unet:
                del unet.forward
            if not had_registry:
                del unet._diffusers_hook
        self._unet, self._context, self._handle, self._registered = None, None, None, None
        self._reset()

    def _reset(self) -> None:
        self._kept, self._kept_key, self._last_step = None, None, None

    # -- the two paths ---------------------------------------------------------------------------

    def _keep_block_input(self, module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        self._pending = hidden.detach()

    def _keep_layer_output(self, module, args, output):
        self._pending = (output[0] if isinstance(output, tuple) else getattr(output, "sample", output)).detach()

    def _forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
        unet, context = self._unet, self._context
        step = context.step_index
        key = (tuple(sample.shape), sample.dtype)
        # Kept features are only valid for the run that made them: a step that does not follow the
        # previous one (a new batch, or a run the approximate cache resumed mid-way) computes in full.
        continuous = self._last_step is not None and step in (self._last_step, self._last_step + 1)
        self._last_step = step
        cached_ok = self._kept is not None and self._kept_key == key and continuous and step not in self._full and step > 0
        stats = context.stats[self.name]
        if not cached_ok:
            self._pending = None
            # Through the forward this hook wraps: accelerate's offload hook and any other hook run as usual.
            output = self._registered.fn_ref.original_forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
            self._kept, self._kept_key = self._pending, key
            stats["full_steps"] += 1
            return output
        stats["cached_steps"] += 1
        accelerate = getattr(unet, "_hf_hook", None) if self._accelerate_inside else None
        if accelerate is None:
            return self._shallow_forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        # As accelerate's own wrapper does: its pre_forward puts an offloaded UNet (and the inputs) on the device.
        args, kwargs = accelerate.pre_forward(unet, sample, timestep, encoder_hidden_states, *args, **kwargs)
        with torch.no_grad() if accelerate.no_grad else nullcontext():
            output = self._shallow_forward(*args, **kwargs)
        return accelerate.post_forward(unet, output)

    def _shallow_forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None, attention_mask=None,
                         cross_attention_kwargs=None, added_cond_kwargs=None, return_dict: bool = True, **_unused):
        """UNet2DConditionModel.forward down to the branch's skip position and back up from it, with
        the kept deep features in place of everything below (see the module docstring)."""
        unet = self._unet
        up_factor = 2 ** unet.num_upsamplers
        forward_upsample_size = any(dim % up_factor != 0 for dim in sample.shape[-2:])
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
        aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs or {})
        emb = emb + aug if aug is not None else emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        encoder_hidden_states = unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs or {})
        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)

        hidden = unet.conv_in(sample)
        skips: tuple = (hidden,)
        attention = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                         cross_attention_kwargs=cross_attention_kwargs)
        for block in unet.down_blocks[: self._level]:
            if getattr(block, "has_cross_attention", False):
                hidden, res = block(hidden_states=hidden, temb=emb, **attention)
            else:
                hidden, res = block(hidden_states=hidden, temb=emb)
            skips += res
        down = unet.down_blocks[self._level]
        for layer in range(self._position):
            hidden = _down_layer(down, layer, hidden, emb, attention)
            skips += (hidden,)

        level_up = len(unet.up_blocks) - 1 - self._level
        up = unet.up_blocks[level_up]
        hidden = self._kept
        for layer in range(len(up.resnets) - 1 - self._position, len(up.resnets)):
            hidden = _up_layer(up, layer, hidden, skips[-1], emb, attention)
            skips = skips[:-1]
        for upsampler in up.upsamplers or []:
            hidden = upsampler(hidden, skips[-1].shape[2:] if forward_upsample_size and skips else None)
        for offset, block in enumerate(unet.up_blocks[level_up + 1:]):
            is_final = level_up + 1 + offset == len(unet.up_blocks) - 1
            res = skips[-len(block.resnets):]
            skips = skips[: -len(block.resnets)]
            upsample_size = skips[-1].shape[2:] if (not is_final and forward_upsample_size) else None
            if getattr(block, "has_cross_attention", False):
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size, **attention)
            else:
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size)
        if unet.conv_norm_out:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        hidden = unet.conv_out(hidden)
        if not return_dict:
            return (hidden,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=hidden)
