"""LoRAs applied through diffusers + PEFT for one generation, removed after.

`attach` loads each LoRA's state dict (from the RAM memo after the first time) into a named PEFT
adapter with `pipe.load_lora_weights`, then `pipe.set_adapters(names, weights)`; `detach` calls
`pipe.unload_lora_weights()`, which puts the original Linear modules back. Unfused, the base weights
are never written: after detach they are bit-identical to before (tests check it).

With `fuse=True` (the manager's FusePolicy decides, from measured step times) the hook copies the
weights of every layer a LoRA touches, fuses the set into them with `pipe.fuse_lora` and drops the
PEFT layers, so the steps run on plain layers; detach writes the copies back. PEFT's own
`unfuse_lora` subtracts the delta again and leaves rounding drift (about 1e-8 in fp32, more in
half precision); restoring the copies is exact.
Text-encoder LoRAs are applied too, so the LoRA hook must be attached before the prompt is encoded
(the manager attaches it around the whole run), and the encoded prompt depends on it.

A LoRA whose file is damaged or whose keys do not fit the model raises ModelLoadError naming the
file, after removing whatever was already loaded: nothing stays half-applied.
"""
from __future__ import annotations

import time
import warnings

import torch
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import ModelLoadError
from pipelines.hooks.base import HookContext
from pipelines.lora.files import StateDictMemo

LORA_HOOK = "lora"


@dataclass(frozen=True)
class AppliedLora:
    name: str
    path: Path
    weight: float  # the text encoders', and the denoiser's unless `unet_weight` is set
    digest: str  # A1111's 12-hex LoRA hash
    unet_weight: float | None = None  # the denoiser's own weight (A1111's `<lora:name:te:unet>`)

    def key(self) -> tuple:
        """What of it changes the output; one weight for both reads as it always did (cache entries stay valid)."""
        base = (self.name, self.digest, float(self.weight))
        return base if self.unet_weight is None else base + (("unet", float(self.unet_weight)),)

    def adapter_weights(self, components: list[str]) -> float | dict:
        """diffusers' `set_adapters` weight: one number, or per LoRA-loadable component when the denoiser's differs."""
        if self.unet_weight is None:
            return float(self.weight)
        return {name: float(self.unet_weight if name in ("unet", "transformer") else self.weight) for name in components}


class LoraHook:
    """Applies `loras` (in order) with their weights; `memo` keeps their state dicts in RAM."""

    name = LORA_HOOK

    def __init__(self, loras: list[AppliedLora], memo: StateDictMemo, fuse: bool = False):
        self.loras = list(loras)
        self.memo = memo
        self.fuse = fuse
        self._pipe = None
        self._originals: list[tuple[torch.Tensor, torch.Tensor]] = []  # (base parameter, its copy) while fused
        self.last_seconds = 0.0
        self.last_from_memo = 0
        self.fuse_seconds = 0.0  # fuse at attach + restore at detach: what fusing cost this run

    def cache_key(self):
        """The LoRA set as it changes the output: names, file hashes and weights, in order."""
        return tuple(lora.key() for lora in self.loras)

    def attach(self, pipe, context: HookContext | None = None) -> None:
        if self._pipe is not None:
            raise RuntimeError("LoraHook is already attached; detach it first (pipelines.hooks.attached does).")
        start = time.perf_counter()
        adapters, weights, from_memo = [], [], 0
        try:
            for index, lora in enumerate(self.loras):
                state, memoized = self.memo.get(lora.path)
                from_memo += memoized
                adapter = f"likeness_{index}"
                try:
                    with _peft_quiet():
                        pipe.load_lora_weights(state, adapter_name=adapter)
                except ModelLoadError:
                    raise
                except Exception as error:  # diffusers/PEFT: unexpected keys, shape mismatch, unknown layout
                    raise ModelLoadError(
                        f"LoRA {lora.path.name} does not fit this model: {error.__class__.__name__}: {str(error)[:300]}") from error
                adapters.append(adapter)
                weights.append(lora.adapter_weights(_components_with(pipe, adapter)))
            if adapters:
                pipe.set_adapters(adapters, adapter_weights=weights)
                if self.fuse:
                    self._fuse(pipe, adapters)
        except BaseException:
            self._restore(pipe)
            _remove(pipe)
            raise
        self._pipe = pipe
        self.last_seconds = time.perf_counter() - start
        self.last_from_memo = from_memo
        if context is not None:
            context.stats[self.name] = {"loras": len(adapters), "from_memo": from_memo, "seconds": round(self.last_seconds, 4)}

    def detach(self, pipe) -> None:
        if self._pipe is None:
            return
        self._restore(pipe)
        _remove(pipe)
        self._pipe = None

    def _fuse(self, pipe, adapters: list[str]) -> None:
        """Copy every weight a LoRA layer wraps, merge the set into it, then drop the PEFT layers."""
        start = time.perf_counter()
        # Copies in host RAM: a GPU copy of every touched layer could double a FLUX transformer in VRAM.
        self._originals = [(param, param.detach().to("cpu", copy=True)) for param in _wrapped_base_parameters(pipe)]
        with _peft_quiet():
            pipe.fuse_lora(adapter_names=adapters, lora_scale=1.0)
            pipe.unload_lora_weights()  # keeps the merged base layers, removes the LoRA matmuls from every step
        self.fuse_seconds = time.perf_counter() - start

    def _restore(self, pipe) -> None:
        """The copied base weights back, bit for bit (PEFT's unfuse would subtract and leave drift)."""
        if not self._originals:
            return
        start = time.perf_counter()
        with torch.no_grad():
            for param, original in self._originals:
                param.copy_(original)
        self._originals = []
        pipe._merged_adapters = set()  # diffusers' record of fused adapters: none are fused any more
        self.fuse_seconds += time.perf_counter() - start


class PassLoras:
    """A later pass's own LoRA set, from its own prompt's tags (A1111 activates the hires prompt's extra networks for
    the second pass; ADetailer its prompt's for the face pass): swapped in for the pass, its text encode included, and
    the first pass's set put back after it (the next batch's first pass). Both hooks attach and detach as every hook
    does; only their order is this class's."""

    def __init__(self, hook: LoraHook, main: LoraHook):
        self.hook = hook
        self.main = main

    @contextmanager
    def swapped(self, pipe):
        self.main.detach(pipe)
        try:
            self.hook.attach(pipe)
            try:
                yield
            finally:
                self.hook.detach(pipe)
        finally:
            self.main.attach(pipe)


def _components_with(pipe, adapter: str) -> list[str]:
    """The pipeline components the adapter has layers in ("unet", "text_encoder", ...): a per-component weight
    names only those (diffusers warns about the others)."""
    return [component for component, names in pipe.get_list_adapters().items() if adapter in names]


def _wrapped_base_parameters(pipe) -> list[torch.Tensor]:
    """The weights (and biases) of every base layer a PEFT LoRA layer wraps, in every component."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found, seen = [], set()
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for module in component.modules():
            if isinstance(module, BaseTunerLayer):
                for param in module.get_base_layer().parameters(recurse=False):
                    if id(param) not in seen:
                        seen.add(id(param))
                        found.append(param)
    return found


def _remove(pipe) -> None:
    """Every LoRA layer out of the pipeline: the denoiser's and the text encoders' original modules back."""
    if hasattr(pipe, "unload_lora_weights"):
        with _peft_quiet():
            pipe.unload_lora_weights()


@contextmanager
def _peft_quiet():
    """PEFT warns about a second adapter next to the first, which is what named adapters are for."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Already found a `peft_config` attribute")
        warnings.filterwarnings("ignore", message=r"Adapter .* was active which is now deleted")
        yield
