"""FLUX.1 true CFG that starts at a given step, as the official PuLID-FLUX app offers it.

diffusers' FluxPipeline applies true CFG (a second, negative-prompt transformer call per step and
`neg + scale * (pos - neg)`) on every step once `true_cfg_scale > 1`. PuLID-FLUX starts it at a
chosen step instead ("timestep to start CFG"): the first steps then run as plain guidance-distilled
steps. This hook gets that result inside diffusers' loop: on a negative call before the start step
it hands back the positive call's output, so `neg + scale * (pos - neg)` equals `pos`.

The negative call is still computed before the start step (a forward hook cannot skip it); the
result is exact, the time is that of true CFG on every step.

A call is the negative one when it is the second call of a step on the same latents tensor (how
FluxPipeline makes it), or when `HookContext.branch` says "uncond".
"""
from __future__ import annotations

from pipelines.hooks.base import HookContext

TRUE_CFG_GATE_HOOK = "true_cfg_gate"


class TrueCfgGateHook:
    name = TRUE_CFG_GATE_HOOK

    def __init__(self, start_step: int, scale: float):
        if start_step < 0:
            raise ValueError("the true CFG start step must be >= 0")
        self.start_step = start_step
        self.scale = scale  # applied by the pipeline (true_cfg_scale); here so cache keys see it
        self._handle = None
        self._context: HookContext | None = None
        self._last: tuple | None = None  # (step, latents, output) of the previous positive call
        self._gated = 0

    def cache_key(self):
        return (self.start_step, self.scale)

    def attach(self, pipe, context: HookContext) -> None:
        if self._handle is not None:
            raise RuntimeError("TrueCfgGateHook is already attached; detach it first (pipelines.hooks.attached does).")
        self._context = context
        self._handle = pipe.transformer.register_forward_hook(self._after_call, with_kwargs=True)
        context.stats["true cfg"] = {"start_step": self.start_step, "gated_calls": 0}

    def detach(self, pipe) -> None:
        if self._handle is not None:
            self._handle.remove()
        if self._context is not None:
            self._context.stats.setdefault("true cfg", {})["gated_calls"] = self._gated
        self._handle = self._context = self._last = None
        self._gated = 0

    def _after_call(self, module, args, kwargs, output):
        context = self._context
        latents = kwargs.get("hidden_states", args[0] if args else None)
        step = context.step_index
        if context.branch in ("cond", "uncond"):
            negative = context.branch == "uncond"
        else:
            negative = self._last is not None and self._last[0] == step and self._last[1] is latents
        if not negative:
            self._last = (step, latents, output)
            return None
        if step < self.start_step:
            self._gated += 1
            return self._last[2]
        return None
