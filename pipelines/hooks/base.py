"""The one interface every generation hook implements, and the context manager that applies them."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Protocol, runtime_checkable


@dataclass
class HookContext:
    """What a hook may read about the running generation.

    `step_index` is the 0-based index of the denoising step about to run; the generation loop
    advances it, so hooks never reach into the scheduler or pipeline globals to find the step.
    `branch` names the classifier-free-guidance branch being evaluated ("cond", "uncond" or
    "batched" when both run in one call), for hooks that keep per-branch state.
    """

    total_steps: int
    height: int
    width: int
    batch_size: int
    step_index: int = 0
    branch: str = "batched"
    stats: dict = field(default_factory=dict)  # hooks report hits, skipped steps, seconds saved here


@runtime_checkable
class GenerationHook(Protocol):
    name: str

    def attach(self, pipe, context: HookContext) -> None:
        """Install on `pipe` for one generation; state from an earlier generation must not survive."""

    def detach(self, pipe) -> None:
        """Remove every trace from `pipe`; the next generation must behave as if never attached."""


def hook_cache_keys(hooks: list) -> tuple | None:
    """(name, key) of every hook, for cache keys; None when a hook cannot say what it changes."""
    keys = []
    for hook in hooks:
        key_of = getattr(hook, "cache_key", None)
        if key_of is None:
            return None
        keys.append((hook.name, key_of()))
    return tuple(keys)


@contextmanager
def attached(pipe, hooks: list[GenerationHook], context: HookContext) -> Iterator[HookContext]:
    """Attach `hooks` in order, yield, then detach them in reverse order whatever happens."""
    names = [hook.name for hook in hooks]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise ValueError(f"hook(s) {', '.join(sorted(duplicates))} given twice; attach each hook once per generation")
    done: list[GenerationHook] = []
    try:
        for hook in hooks:
            hook.attach(pipe, context)
            done.append(hook)
        yield context
    finally:
        for hook in reversed(done):
            hook.detach(pipe)
