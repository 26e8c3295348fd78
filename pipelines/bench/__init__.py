"""Benchmark suites behind `app.py bench --suite NAME`; each prints a readable report and can write JSON.

- `core` (`pipelines.bench.core`): per-stage times, readout overhead, model swap, RSS growth.
- `vae` (`pipelines.bench.vae`): VAE decode time, peak memory and fidelity per dtype.
- `pulid` (`pipelines.bench.pulid`): VAE decode, step time, face stage and memory with PuLID on vs off.
- `cache` (`pipelines.bench.cache`): DeepCache vs the reference package, FLUX block caches, the
  approximate cache (hit rate, steps saved, faiss lookup time), the prompt memo.
- `gpu` (`pipelines.bench.gpu`): full-size SDXL / FLUX.1-dev / PuLID rows on a GPU within a time budget
  (`--budget-s`); `--dry-run` runs the same rows on the CPU with tiny configs.
- `soak` (`pipelines.bench.soak`): 200 generations across two models with swaps and caches on/off;
  RSS (and, on a GPU, allocator) growth after the warm-up must stay under 2 %, with no errors.
- `demo` (`pipelines.demo.checker`): the trained demo on held-out prompts (per-attribute accuracy by
  image analysis), seed diversity, seconds per image, DeepCache and the approximate cache on it.
- `lora` (`pipelines.bench.lora`): LoRA load cold vs memoized, step time with 0/1/3 LoRAs, fused vs unfused.
- `refine` (`pipelines.bench.refine`): img2img at strength 0.5 and inpainting vs text-to-image (denoise
  time, init-image encode).
- `scale` (`pipelines.bench.scale`): the shared approximate cache: lookup median/p99 on Milvus Lite vs
  faiss at 1k/10k/100k entries, and the hit rate of one cache fed by two clients vs one.

Suites report their targets (PASS/FAIL) but never fail on them: the exit code is 0 when they ran.
"""
from __future__ import annotations

import json
from pathlib import Path

SUITES = ("core", "vae", "pulid", "cache", "gpu", "soak", "demo", "lora", "scale", "refine")


def run_suite(suite: str, manager, json_file: Path | None = None, quick: bool = False, budget_s: float = 420.0,
              dry_run: bool = False, sizes: tuple[int, ...] | None = None, milvus_uri: str | None = None) -> int:
    """Run one suite against the app's manager (its device and settings); returns the exit code.

    `budget_s` and `dry_run` are the gpu suite's (its time budget; its CPU run on tiny configs); `sizes`
    and `milvus_uri` the scale suite's (approximate-cache entries to time lookups at; a Milvus server to time too).
    """
    if suite == "gpu":
        from pipelines.bench import gpu

        return gpu.run(manager, json_file, budget_s=budget_s, dry_run=dry_run)
    if suite == "core":
        from pipelines.bench.core import run

        return run(manager, json_file, quick=quick)
    if suite == "pulid":
        from pipelines.bench import pulid

        return pulid.run(manager, json_file, quick=quick)
    if suite == "vae":
        from pipelines.bench import vae

        figures = vae.run(manager.device, quick=quick)
        print(vae.report(figures, manager.device), flush=True)
        if json_file is not None:
            from pipelines.bench.core import clean_for_json

            Path(json_file).write_text(json.dumps(clean_for_json(figures), indent=2))
        return 0
    if suite == "cache":
        from pipelines.bench.cache import run

        return run(manager, json_file, quick=quick)
    if suite == "soak":
        from pipelines.bench import soak

        return soak.run(manager, json_file, quick=quick)
    if suite == "demo":
        from pipelines.demo import checker

        return checker.run(manager, json_file, quick=quick)
    if suite == "lora":
        from pipelines.bench import lora

        return lora.run(manager, json_file, quick=quick)
    if suite == "refine":
        from pipelines.bench import refine

        return refine.run(manager, json_file, quick=quick)
    if suite == "scale":
        from pipelines.bench import scale

        return scale.run(manager, json_file, quick=quick, sizes=sizes, server_uri=milvus_uri)
    raise ValueError(f"unknown bench suite {suite!r}; choose one of: {', '.join(SUITES)}")
