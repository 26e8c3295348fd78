"""When to fuse a LoRA set into the base weights, decided from measured step times.

Unfused PEFT layers add two thin matmuls per targeted Linear on every step; fusing writes
`W + sum(weight_i * B_i A_i)` into the base weights once, so the steps cost what the base model
costs, but the fuse (and the exact restore after the run) is paid per generation. Which is faster
depends on the GPU, the model, the LoRA ranks and the step count, so the policy measures instead of
guessing:

- a LoRA set seen for the first time runs unfused (its step time is measured);
- the first repeat of the set runs fused (the fused step time and the fuse + restore cost are measured);
- from then on it fuses when `steps * (unfused step - fused step) > fuse + restore`.

Measurements are kept per (model, LoRA set, size), since the step cost depends on all three.
Modes: "auto" (the above), "off" (never fuse), "always" (fuse every run, the benchmark's arm).
"""
from __future__ import annotations

import statistics
import threading
from dataclasses import dataclass

LORA_FUSE_MODES = ("auto", "off", "always")


@dataclass
class _Timings:
    runs: int = 0
    unfused_step_s: float | None = None
    fused_step_s: float | None = None
    overhead_s: float | None = None  # fuse + restore of the base weights, per generation


@dataclass(frozen=True)
class FuseDecision:
    fuse: bool
    reason: str


class FusePolicy:
    def __init__(self, mode: str = "auto"):
        if mode not in LORA_FUSE_MODES:
            raise ValueError(f"LoRA fusing must be one of {', '.join(LORA_FUSE_MODES)}, got {mode!r}")
        self.mode = mode
        self._timings: dict[tuple, _Timings] = {}
        self._lock = threading.Lock()

    def decide(self, key: tuple, steps: int) -> FuseDecision:
        if self.mode == "off":
            return FuseDecision(False, "unfused (fusing off in Settings)")
        if self.mode == "always":
            return FuseDecision(True, "fused (fusing always on in Settings)")
        with self._lock:
            seen = self._timings.get(key)
        if seen is None or seen.unfused_step_s is None:
            return FuseDecision(False, "unfused (first use of this set: measuring)")
        if seen.fused_step_s is None or seen.overhead_s is None:
            return FuseDecision(True, "fused (a repeat: measuring whether fusing pays)")
        saved = steps * (seen.unfused_step_s - seen.fused_step_s)
        if saved > seen.overhead_s:
            return FuseDecision(True, f"fused (saves {saved:.2f} s of steps for {seen.overhead_s:.2f} s of fuse + restore)")
        return FuseDecision(False, f"unfused (fusing would save {max(saved, 0):.2f} s of steps but costs {seen.overhead_s:.2f} s)")

    def record(self, key: tuple, fused: bool, step_seconds: list[float], overhead_s: float = 0.0) -> None:
        """A finished run's per-step times (none when the latent cache skipped the denoise: nothing learnt)."""
        if not step_seconds:
            return
        step = statistics.median(step_seconds)
        with self._lock:
            seen = self._timings.setdefault(key, _Timings())
            seen.runs += 1
            if fused:
                seen.fused_step_s, seen.overhead_s = step, overhead_s
            else:
                seen.unfused_step_s = step

    def forget(self) -> None:
        with self._lock:
            self._timings.clear()
