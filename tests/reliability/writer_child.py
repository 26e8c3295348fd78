"""A writer for the kill -9 tests: writes in a loop with the real classes until it is killed.

    python tests/reliability/writer_child.py KIND FOLDER POINT

KIND: images | settings | approx. POINT: `random` (print "ready" after the first write and go on
writing), or `NAME:K`, where NAME is a write point of pipelines.atomic (`fsync`: the data is
written, not yet fsynced; `publish`: just before the rename / link to the final name; `published`:
renamed, the folder not yet fsynced and the temporary not yet removed) and K counts its calls:
on the K-th call the child prints "at NAME" and waits there to be killed.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from pipelines import atomic  # noqa: E402

APPROX_STEPS = 10
APPROX_PARTITION = "p"


def approx_config():
    from pipelines.caches.approximate import ApproximateCacheConfig

    return ApproximateCacheConfig(max_bytes=400_000)  # about 5 entries: evictions happen too


def approx_vector(number: int) -> np.ndarray:
    return np.random.default_rng(number).standard_normal(16).astype(np.float32)


def pause_at(point: str) -> None:
    name, _, count = point.partition(":")
    remaining = [int(count or 1)]

    def wrap(function):
        def paused(*args, **kwargs):
            remaining[0] -= 1
            if remaining[0] == 0:
                print(f"at {name}", flush=True)
                time.sleep(600)
            return function(*args, **kwargs)
        return paused

    if name == "fsync":
        atomic.fsync_file = wrap(atomic.fsync_file)
    elif name == "publish":
        os.link, os.replace = wrap(os.link), wrap(os.replace)
    elif name == "published":
        atomic.fsync_folder = wrap(atomic.fsync_folder)
    else:
        raise SystemExit(f"unknown write point {name!r}")


def writes(kind: str, folder: Path):
    """Yield after each complete write, forever."""
    if kind == "images":
        from PIL import Image

        from pipelines.outputs import save_image

        noise = np.random.default_rng(0).integers(0, 256, (640, 640, 3), dtype=np.uint8)
        image = Image.fromarray(noise)  # noise does not compress: a slow, big PNG to be killed in
        for seed in range(10**9):
            save_image(image, f"seed {seed}", folder, seed)
            yield
    elif kind == "settings":
        from settings.schema import AppSettings, SettingsStore

        store = SettingsStore(folder / "settings.json")
        for number in range(10**9):
            store.save(AppSettings(preview_every=number % 50))
            yield
    elif kind == "approx":
        import torch

        from pipelines.caches.approximate import ApproximateCache

        cache = ApproximateCache(folder, approx_config())
        for number in range(10**9):
            latents = {step: torch.randn(1, 4, 48, 48) for step in (2, 5)}
            cache.store(APPROX_PARTITION, approx_vector(number), APPROX_STEPS, latents, 0.1)
            yield
    else:
        raise SystemExit(f"unknown kind {kind!r}")


def main() -> None:
    kind, folder, point = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    if point != "random":
        pause_at(point)
    for number, _ in enumerate(writes(kind, folder)):
        if number == 0 and point == "random":
            print("ready", flush=True)


if __name__ == "__main__":
    main()
