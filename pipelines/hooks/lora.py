"""LoRAs applied through diffusers + PEFT for one generation, removed after.

`attach` loads each LoRA's state dict (from the RAM memo after the first time) into a named PEFT
adapter with `pipe.load_lora_weights`, then `pipe.set_adapters(names, weights)`; `detach` calls
`pipe.unload_lora_weights()`, which puts the original Linear modules back. Nothing is fused, so the
base weights are never written: after detach they are bit-identical to before (tests check it).
Text-encoder LoRAs are applied too, so the LoRA hook must be attached before the prompt is encoded
(the manager attaches it around the whole run), and the encoded prompt depends on it.

A LoRA whose file is damaged or whose keys do not fit the model raises ModelLoadError naming the
file, after removing whatever was already loaded: nothing stays half-applied.
"""
from __future__ import annotations

import time
import warnings
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
    weight: float
    digest: str  # A1111's 12-hex LoRA hash


class LoraHook:
    """Applies `loras` (in order) with their weights; `memo` keeps their state dicts in RAM."""

    name = LORA_HOOK

    def __init__(self, loras: list[AppliedLora], memo: StateDictMemo):
        self.loras = list(loras)
        self.memo = memo
        self._pipe = None
        self.last_seconds = 0.0
        self.last_from_memo = 0

    def cache_key(self):
        """The LoRA set as it changes the output: names, file hashes and weights, in order."""
        return tuple((lora.name, lora.digest, float(lora.weight)) for lora in self.loras)

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
                weights.append(float(lora.weight))
            if adapters:
                pipe.set_adapters(adapters, adapter_weights=weights)
        except BaseException:
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
        _remove(pipe)
        self._pipe = None


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
