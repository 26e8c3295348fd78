"""Memory stays flat over repeated generations on one model.

Why these bounds: the process RSS here is ~0.6 GiB (torch, diffusers, the tiny models and whatever
the session loaded before). glibc keeps freed heap pages, which made RSS swing by -8..+20 MiB between
runs at 256x256 with no leak at all; `malloc_trim(0)` before each reading hands them back, after
which the readings are flat. An exact comparison would still be fragile, so the two bounds are

- the issue's loose one: growth after the warm-up runs stays below 5% of the RSS after the warm-up;
- a sharper one in absolute terms: growth stays below the size of the model itself (~20 MiB). A
  leak of a pipeline copy, a reloaded component or a VAE activation per run (4 MiB at 256x256 with
  16 channels) over 10 runs crosses it; per-run leaks of ~1 MiB or less (one decoded image) do not.

Measured on this CPU (2 cores, glibc): 0.0 MiB of growth over the 10 runs.
"""
from __future__ import annotations

import ctypes
import gc
import os

import psutil

from pipelines.loading import pipeline_bytes
from tests.tiny_models import tiny_request

RUNS = 10


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise), so RSS shows live memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS is just noisier
        pass


def rss() -> int:
    gc.collect()
    _release_free_heap()
    return psutil.Process(os.getpid()).memory_info().rss


def test_rss_is_flat_over_ten_generations(shared_manager, tiny_pipes):
    model_bytes = pipeline_bytes(tiny_pipes["sd15"])

    def generate(seed: int):
        # 256x256 rather than 64x64: bigger per-run buffers, so a per-run leak shows sooner.
        return shared_manager.generate(tiny_request("sd15", seed=seed, width=256, height=256))

    for seed in range(2):  # warm-up: model load, allocator pools, first-call caches in torch/diffusers
        generate(seed)
    baseline = rss()
    readings = []
    for index in range(RUNS):
        result = generate(100 + index)
        assert result.images[0].image.size == (256, 256)
        del result
        readings.append(rss())
    growth = max(readings) - baseline
    report = f"RSS baseline {baseline / 2**20:.0f} MiB, growth per run (MiB): {[round((r - baseline) / 2**20, 1) for r in readings]}"
    assert growth < 0.05 * baseline, report
    assert growth < model_bytes, report
    # The model stayed loaded once: no reload, no second copy in the cache.
    assert [r.size_bytes for r in shared_manager.cache.records() if r.name == "tiny-sd15"] == [model_bytes]
