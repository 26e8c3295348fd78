"""One small memo cache with the eviction policies users ask for by name.

LRU, LFU, FIFO, random and TTL come from `cachetools`; LIFO (evict the newest entry) is the one
policy it lacks, added here. Every cache counts hits, misses and the seconds its hits saved, so
the Caches panel and the readout can show what it bought.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Hashable

import cachetools

POLICIES = ("lru", "lfu", "fifo", "lifo", "random", "ttl")


class LIFOCache(cachetools.Cache):
    """Evicts the most recently inserted entry: keeps a stable working set of the first ones."""

    def __init__(self, maxsize: int, getsizeof=None):
        super().__init__(maxsize, getsizeof)
        self._order: list = []

    def __setitem__(self, key, value, cache_setitem=cachetools.Cache.__setitem__):
        cache_setitem(self, key, value)
        if key in self._order:
            self._order.remove(key)
        self._order.append(key)

    def __delitem__(self, key, cache_delitem=cachetools.Cache.__delitem__):
        cache_delitem(self, key)
        self._order.remove(key)

    def popitem(self):
        if not self._order:
            raise KeyError(f"{type(self).__name__} is empty")
        key = self._order[-1]
        return key, self.pop(key)


def make_store(policy: str, max_entries: int, ttl_seconds: float | None, timer: Callable[[], float] = time.monotonic):
    if policy not in POLICIES:
        raise ValueError(f"cache policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if max_entries < 1:
        raise ValueError("a cache needs room for at least one entry")
    if policy == "ttl":
        return cachetools.TTLCache(max_entries, ttl_seconds or 600.0, timer=timer)
    return {
        "lru": cachetools.LRUCache,
        "lfu": cachetools.LFUCache,
        "fifo": cachetools.FIFOCache,
        "lifo": LIFOCache,
        "random": cachetools.RRCache,
    }[policy](max_entries)


@dataclass(frozen=True)
class CacheStats:
    name: str
    policy: str
    entries: int
    max_entries: int
    bytes: int
    hits: int
    misses: int
    seconds_saved: float


def value_bytes(value) -> int:
    """Bytes held by tensors inside a value (tuples, lists and dicts are walked)."""
    if hasattr(value, "element_size") and hasattr(value, "numel"):
        return value.element_size() * value.numel()
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(value_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(value_bytes(v) for v in value)
    return 0


class MemoCache:
    """`get_or_compute(key, compute)`: thread-safe, counts hits/misses and the time hits saved."""

    def __init__(self, name: str, policy: str = "lru", max_entries: int = 32, ttl_seconds: float | None = None,
                 timer: Callable[[], float] = time.monotonic):
        self.name = name
        self.policy = policy
        self.max_entries = max_entries
        self._store = make_store(policy, max_entries, ttl_seconds, timer)
        self._cost: dict[Hashable, float] = {}  # seconds each entry took to compute
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        self.seconds_saved = 0.0

    def get(self, key: Hashable):
        with self._lock:
            try:
                value = self._store[key]
            except KeyError:
                self.misses += 1
                return None
            self.hits += 1
            self.seconds_saved += self._cost.get(key, 0.0)
            return value

    def put(self, key: Hashable, value, seconds: float = 0.0) -> None:
        with self._lock:
            self._store[key] = value
            self._cost[key] = seconds
            # Forget the cost of entries the policy evicted (or that expired).
            for stale in [k for k in self._cost if k not in self._store]:
                del self._cost[stale]

    def get_or_compute(self, key: Hashable, compute: Callable[[], object]) -> tuple[object, bool]:
        """(value, hit). `compute` runs outside the lock, so a slow miss never blocks other keys."""
        value = self.get(key)
        if value is not None:
            return value, True
        start = time.perf_counter()
        value = compute()
        self.put(key, value, time.perf_counter() - start)
        return value, False

    def keys(self) -> list:
        with self._lock:
            return list(self._store.keys())

    def clear(self) -> None:
        with self._lock:
            self._store.clear()
            self._cost.clear()

    def stats(self) -> CacheStats:
        with self._lock:
            if hasattr(self._store, "expire"):
                self._store.expire()
            size = sum(value_bytes(v) for v in self._store.values())
            return CacheStats(self.name, self.policy, len(self._store), self.max_entries, size, self.hits, self.misses, self.seconds_saved)
