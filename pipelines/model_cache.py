"""Two-level model cache: loaded pipelines kept in CPU RAM, the ones in use moved to the GPU.

Policy (after InvokeAI's model cache):
- RAM level: every loaded pipeline stays in CPU RAM until the RAM budget is exceeded; then the
  least recently used unlocked pipelines are dropped. Loading from RAM is a device copy instead of
  a disk read plus weight conversion, which is what makes switching back to a model fast.
- VRAM level (only when the compute device is a GPU): a pipeline moves to the GPU when it is used.
  If the GPU budget would be exceeded, the smallest unlocked pipelines go back to CPU RAM first:
  they are the cheapest to bring back, and moving one big model out often frees enough.
  A pipeline larger than the whole budget runs with diffusers' per-component CPU offload.
- Locks: a pipeline in use has a lock count > 0 and is never evicted or offloaded; callers only
  take it through `locked()`, a context manager that always unlocks.
- A pipeline on the GPU holds no second copy in RAM; offloading it is a copy back. That halves RAM
  use compared with keeping a RAM copy, at the cost of a device-to-host copy on offload.
All state changes happen under one lock, so the cache is safe to use from several threads.
"""
from __future__ import annotations

import gc
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from pipelines import devices


@dataclass
class CachedModel:
    name: str
    pipe: object
    size_bytes: int
    on_device: bool = False
    offloaded: bool = False  # running with per-component CPU offload
    lock_count: int = 0
    last_used: float = 0.0

    @property
    def locked(self) -> bool:
        return self.lock_count > 0


@dataclass(frozen=True)
class CacheRecord:
    """A snapshot of one cached model, for the Models tab and the CLI."""

    name: str
    size_bytes: int
    level: str  # "VRAM", "RAM", or "VRAM (offload)"
    locked: bool
    last_used: float


class ModelCache:
    def __init__(
        self,
        compute_device: torch.device,
        ram_budget_bytes: int,
        vram_budget_bytes: int | None = None,
        on_message: Callable[[str], None] | None = None,
    ):
        self.compute_device = compute_device
        self.ram_budget_bytes = ram_budget_bytes
        self.vram_budget_bytes = vram_budget_bytes
        self._models: "OrderedDict[str, CachedModel]" = OrderedDict()  # least recently used first
        self._lock = threading.RLock()
        self._on_message = on_message or (lambda text: None)

    @property
    def uses_gpu(self) -> bool:
        return self.compute_device.type != "cpu"

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._models

    def put(self, name: str, pipe, size_bytes: int, locked: bool = False) -> CachedModel:
        """Add a freshly loaded pipeline (on the CPU) and evict from RAM if over budget.

        `locked=True` hands it back already locked (release it with `release`), so nothing can
        evict it between loading and use.
        """
        with self._lock:
            entry = self._models[name] = CachedModel(name, pipe, size_bytes, lock_count=int(locked), last_used=time.monotonic())
            self._models.move_to_end(name)
            self._evict_from_ram(keep=name)
            return entry

    def drop(self, name: str) -> bool:
        with self._lock:
            entry = self._models.get(name)
            if entry is None:
                return False
            if entry.locked:
                raise RuntimeError(f"{name} is in use and cannot be unloaded now.")
            del self._models[name]
        del entry
        self._release_memory()
        return True

    def clear(self) -> None:
        with self._lock:
            for name in [n for n, e in self._models.items() if not e.locked]:
                del self._models[name]
        self._release_memory()

    def offload_idle(self) -> list[str]:
        """Move every model not in use off the GPU to RAM (A1111's "unload checkpoint"): the next use brings it back
        from RAM. Returns the names moved; nothing moves on a CPU device (RAM is where they run)."""
        moved = []
        with self._lock:
            for entry in self._models.values():
                if entry.locked or not entry.on_device:
                    continue
                if entry.offloaded:  # accelerate's per-component offload: its hooks go, the modules stay in RAM
                    entry.pipe.remove_all_hooks()
                    entry.offloaded = False
                entry.pipe.to("cpu")
                entry.on_device = False
                moved.append(entry.name)
        if moved:
            self._release_memory()
        return moved

    def records(self) -> list[CacheRecord]:
        with self._lock:
            return [
                CacheRecord(e.name, e.size_bytes, "VRAM (offload)" if e.offloaded else "VRAM" if e.on_device else "RAM", e.locked, e.last_used)
                for e in self._models.values()
            ]

    def ram_bytes(self) -> int:
        with self._lock:
            return sum(e.size_bytes for e in self._models.values() if not e.on_device)

    def vram_bytes(self) -> int:
        with self._lock:
            return sum(e.size_bytes for e in self._models.values() if e.on_device and not e.offloaded)

    def touch(self, name: str) -> None:
        """Count a use without locking: selecting a cached model makes it most recently used."""
        with self._lock:
            entry = self._models.get(name)
            if entry is not None:
                entry.last_used = time.monotonic()
                self._models.move_to_end(name)

    def acquire(self, name: str) -> CachedModel | None:
        """Lock `name` if it is cached (None if not, e.g. evicted meanwhile); pair with `release`."""
        with self._lock:
            entry = self._models.get(name)
            if entry is None:
                return None
            entry.lock_count += 1
            entry.last_used = time.monotonic()
            self._models.move_to_end(name)
            return entry

    def release(self, entry: CachedModel) -> None:
        with self._lock:
            entry.lock_count -= 1

    @contextmanager
    def locked(self, name: str) -> Iterator[CachedModel]:
        """Lock the model, make sure it is on the compute device, and always unlock afterwards."""
        entry = self.acquire(name)
        if entry is None:
            raise KeyError(name)
        try:
            with self._lock:
                self._move_to_device(entry)
            yield entry
        finally:
            self.release(entry)

    def move_to_device(self, name: str) -> float:
        """Bring a cached model to the compute device now (a load from RAM); returns seconds taken."""
        with self._lock:
            entry = self._models[name]
            start = time.perf_counter()
            self._move_to_device(entry)
            devices.synchronize(self.compute_device)
            entry.last_used = time.monotonic()
            self._models.move_to_end(name)
            return time.perf_counter() - start

    # -- policy -----------------------------------------------------------------------------------

    def _move_to_device(self, entry: CachedModel) -> None:
        if not self.uses_gpu or entry.on_device:
            return
        budget = self.vram_budget_bytes
        if budget is not None and entry.size_bytes > budget:
            entry.pipe.enable_model_cpu_offload(device=self.compute_device)
            entry.on_device = entry.offloaded = True
            self._on_message(f"{entry.name} ({entry.size_bytes / 2**30:.1f} GiB) is larger than the VRAM budget; running with per-component CPU offload.")
            return
        if budget is not None:
            self._make_room_in_vram(entry.size_bytes)
        entry.pipe.to(self.compute_device)
        entry.on_device = True

    def _make_room_in_vram(self, needed: int) -> None:
        def resident() -> list[CachedModel]:
            return [e for e in self._models.values() if e.on_device and not e.offloaded]

        used = sum(e.size_bytes for e in resident())
        for victim in sorted((e for e in resident() if not e.locked), key=lambda e: e.size_bytes):
            if used + needed <= self.vram_budget_bytes:
                break
            victim.pipe.to("cpu")
            victim.on_device = False
            used -= victim.size_bytes
            self._on_message(f"Moved {victim.name} to CPU RAM to make room on {self.compute_device}.")
        devices.free_device_memory(self.compute_device)
        self._evict_from_ram(keep="")

    def _evict_from_ram(self, keep: str) -> None:
        evicted = False
        for name, entry in list(self._models.items()):
            if self.ram_bytes() <= self.ram_budget_bytes:
                break
            if entry.locked or name == keep:
                continue
            del self._models[name]
            evicted = True
            self._on_message(f"Unloaded {name} ({entry.size_bytes / 2**30:.2f} GiB) to stay within the RAM cache budget.")
        if evicted:
            self._release_memory()

    def _release_memory(self) -> None:
        gc.collect()
        devices.free_device_memory(self.compute_device)
