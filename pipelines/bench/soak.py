"""`python app.py bench --suite soak`: many generations in one process; memory must stay flat.

200 generations (40 with `--quick`) on two small SD 1.5 models (the demo and a second tiny one
with its own weights), in a fixed, repeatable mix:
- the model changes every `SWAP_EVERY` generations, and the RAM cache holds only one of them, so
  every swap frees one model and loads the other from disk;
- DeepCache (N=3) on for half of the runs; the approximate cache on for a third of them (prompts
  are near-duplicates of earlier ones, so it hits); every fourth run repeats the previous request
  exactly (the exact-repeat latent cache hits); every other run saves its PNG;
- telemetry on, as in the UI.
Process RSS is read (after a garbage collection) when a warm-up window of `WARMUP` generations is
over and again at the end; growth = (end - start) / start, target < 2 %. On a GPU the allocator's
allocated and reserved bytes must grow less than 2 % too. Any generation that raises is an error
(target 0). The report is a table with PASS/FAIL; like every suite it exits 0 when it ran.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.bench.system import malloc_trim, print_suite_header, rss_bytes
from pipelines.bench.tables import heading, mib, seconds, table, verdict

GENERATIONS, QUICK_GENERATIONS = 200, 40
WARMUP_SHARE = 0.1  # the first 10 % (at least 2 runs) fill caches and allocator pools: not measured
SWAP_EVERY = 5
GROWTH_TARGET = 0.02
SECOND_MODEL = "soak-sd15-b"
SIZE, STEPS = 128, 10


@dataclass(frozen=True)
class Run:
    """One generation of the plan."""

    index: int
    model: str
    prompt: str
    seed: int
    deepcache: bool
    approximate: bool
    repeat: bool  # the same request as the run before: an exact-repeat cache hit
    save: bool


def plan(count: int, models: tuple[str, str]) -> list[Run]:
    from pipelines.bench.cache import prompt_stream

    prompts = prompt_stream(count, seed=7)
    runs: list[Run] = []
    for index in range(count):
        model = models[(index // SWAP_EVERY) % 2]
        if index % 4 == 3 and runs[-1].model == model:
            runs.append(Run(index, **{k: v for k, v in runs[-1].__dict__.items() if k not in ("index", "repeat")}, repeat=True))
            continue
        runs.append(Run(index, model, prompts[index], 1000 + index, deepcache=(index // 2) % 2 == 1,
                        approximate=index % 3 == 0, repeat=False, save=index % 2 == 0))
    return runs


def request_for(run: Run):
    from pipelines.request import GenerationRequest

    return GenerationRequest(model=run.model, prompt=run.prompt, steps=STEPS, width=SIZE, height=SIZE, seed=run.seed,
                             sampler="Euler", cfg_scale=6.0, deepcache_interval=3 if run.deepcache else 1,
                             approximate_cache=run.approximate, save=run.save)


def device_bytes(device: torch.device) -> tuple[int, int] | None:
    """(allocated, reserved) bytes of the CUDA caching allocator; None on other devices."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)


def growth(start: int | None, end: int | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start) / start if start else (0.0 if end == start else float("inf"))


def soak(manager, count: int, say) -> dict:
    """Run the plan on `manager` (whose models include the demo and SECOND_MODEL); the figures."""
    from pipelines.catalog import DEMO_MODEL_NAME

    runs = plan(count, (DEMO_MODEL_NAME, SECOND_MODEL))
    warmup = max(2, round(count * WARMUP_SHARE))
    device = manager.device
    readings: list[int] = []
    errors: list[str] = []
    counts = {"swaps": 0, "loads_from_disk": 0, "deepcache_runs": 0, "approx_hits": 0, "exact_hits": 0, "saved": 0}
    start_rss = start_device = None
    current = None
    started = time.perf_counter()
    for run in runs:
        if run.index == warmup:
            start_rss, start_device = rss_bytes(), device_bytes(device)
            say(f"warm-up over after {warmup} runs: RSS {mib(start_rss)}")
        try:
            if run.model != current:
                counts["swaps"] += current is not None
                counts["loads_from_disk"] += manager.load(run.model).source == "disk"
                current = run.model
            result = manager.generate(request_for(run))
            if len(result.images) != 1 or result.images[0].image is None:
                raise RuntimeError(f"{len(result.images)} images came back")
            notes = result.cache_notes
            counts["deepcache_runs"] += result.hook_stats.get("deepcache", {}).get("cached_steps", 0) > 0
            counts["approx_hits"] += str(notes.get("approx cache", "")).startswith("hit")
            counts["exact_hits"] += str(notes.get("latent cache", "")).startswith("hit")
            counts["saved"] += bool(result.images[0].path)
        except Exception as error:  # noqa: BLE001 - the soak counts every failure instead of stopping
            errors.append(f"run {run.index} ({run.model}): {error.__class__.__name__}: {error}")
        if run.index >= warmup:
            readings.append(rss_bytes())
        if (run.index + 1) % max(1, count // 10) == 0:
            say(f"{run.index + 1}/{count} generations, RSS {mib(rss_bytes(collect=False))}, errors {len(errors)}")
    elapsed = time.perf_counter() - started
    end_rss, end_device = rss_bytes(), device_bytes(device)
    trimmed = rss_bytes() if malloc_trim() else None
    measured = len(readings)
    return {
        "generations": count, "warmup": warmup, "measured": measured, "seconds": elapsed,
        "seconds_per_generation": elapsed / max(count, 1), "size": SIZE, "steps": STEPS, **counts,
        "errors": len(errors), "error_messages": errors[:10],
        "rss_start": start_rss, "rss_end": end_rss, "rss_peak": max(readings, default=None),
        "rss_growth_fraction": growth(start_rss, end_rss), "rss_after_malloc_trim": trimmed,
        # Caches (prompt memo, latent cache, faiss indexes) fill during the first half; a leak keeps growing.
        "rss_growth_second_half_fraction": growth(readings[measured // 2], readings[-1]) if measured >= 2 else None,
        "gpu_allocated_start": start_device[0] if start_device else None, "gpu_allocated_end": end_device[0] if end_device else None,
        "gpu_reserved_start": start_device[1] if start_device else None, "gpu_reserved_end": end_device[1] if end_device else None,
        "gpu_allocated_growth_fraction": growth(start_device and start_device[0], end_device and end_device[0]),
        "gpu_reserved_growth_fraction": growth(start_device and start_device[1], end_device and end_device[1]),
    }


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.2f} %"


def report(figures: dict) -> str:
    rss_ok = figures["rss_growth_fraction"] is not None and figures["rss_growth_fraction"] < GROWTH_TARGET
    targets = [["RSS growth", percent(figures["rss_growth_fraction"]), f"< {GROWTH_TARGET * 100:.0f} %", verdict(rss_ok),
                f"{mib(figures['rss_start'])} -> {mib(figures['rss_end'])} (peak {mib(figures['rss_peak'])}); "
                f"second half {percent(figures['rss_growth_second_half_fraction'])}"]]
    passed = rss_ok
    if figures["gpu_allocated_start"] is not None:
        for kind in ("allocated", "reserved"):
            value = figures[f"gpu_{kind}_growth_fraction"]
            ok = value is not None and value < GROWTH_TARGET
            passed &= ok
            targets.append([f"GPU {kind} growth", percent(value), f"< {GROWTH_TARGET * 100:.0f} %", verdict(ok),
                            f"{mib(figures[f'gpu_{kind}_start'])} -> {mib(figures[f'gpu_{kind}_end'])}"])
    else:
        targets.append(["GPU allocator growth", "-", f"< {GROWTH_TARGET * 100:.0f} %", "-", "no CUDA device: not measured"])
    errors_ok = figures["errors"] == 0
    passed &= errors_ok
    targets.append(["errors", str(figures["errors"]), "0", verdict(errors_ok), "; ".join(figures["error_messages"][:2])])
    figures["passed"] = passed
    mix = [
        ["generations", figures["generations"], f"{figures['warmup']} warm-up, {figures['measured']} measured"],
        ["model swaps", figures["swaps"], f"{figures['loads_from_disk']} loads from disk (the RAM cache holds one model)"],
        ["DeepCache N=3 runs", figures["deepcache_runs"], ""],
        ["approximate cache hits", figures["approx_hits"], ""],
        ["exact-repeat hits", figures["exact_hits"], ""],
        ["images saved", figures["saved"], ""],
        ["time", seconds(figures["seconds"]), f"{seconds(figures['seconds_per_generation'])} per generation at "
                                                f"{figures['size']}x{figures['size']}, {figures['steps']} steps"],
        ["RSS after malloc_trim", mib(figures["rss_after_malloc_trim"]), "freed heap returned to the OS (glibc)"],
    ]
    return "\n".join([
        heading("What ran"), table(["", "count", "note"], mix, "lrl"),
        heading(f"Targets: {verdict(passed)}"), table(["target", "measured", "target", "verdict", "note"], targets, "lrrll"),
    ])


def build_models(models_dir: Path) -> int:
    """The second model, saved as a diffusers folder; returns its size in bytes."""
    from pipelines.bench.tiny_models import build_tiny_sd15, save_tiny_pipeline

    folder = save_tiny_pipeline(build_tiny_sd15(seed=4321), models_dir / SECOND_MODEL)
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(manager, json_file: Path | None = None, quick: bool = False, out=None, generations: int | None = None) -> int:
    from pipelines.manager import ManagerConfig, PipelineManager

    out = out or sys.stdout
    started = time.perf_counter()

    def say(text: str) -> None:
        print(f"  [{time.perf_counter() - started:6.1f} s] {text}", file=out, flush=True)

    count = generations or (QUICK_GENERATIONS if quick else GENERATIONS)
    print_suite_header(out, f"Likeness bench --suite soak ({'quick' if quick else 'full'}, {count} generations)", manager.device)
    workdir = Path(tempfile.mkdtemp(prefix="likeness-bench-soak-"))
    try:
        size = build_models(workdir / "models")
        soak_manager = PipelineManager(ManagerConfig(
            models_dir=workdir / "models", outputs_dir=workdir / "outputs", cache_dir=workdir / "cache",
            device=str(manager.device), include_hf_cache=False, preview_every=2, ram_cache_bytes=int(size * 1.5)))
        soak_manager.prepare_demo_model()
        say(f"demo + {SECOND_MODEL} (tiny SD 1.5, {mib(size)} each) in {workdir}; RAM cache for one model")
        threads, logger = torch.get_num_threads(), logging.getLogger("likeness")
        level = logger.level
        logger.setLevel(logging.WARNING)  # not 40 "loaded … from disk" lines; warnings still show
        if soak_manager.device.type == "cpu":
            # One thread: on a busy CPU a thread pool waiting for its share makes runs 100x slower, and
            # the figure here is memory, not speed.
            torch.set_num_threads(1)
        try:
            figures = {"suite": "soak", "mode": "quick" if quick else "full", "device": str(manager.device),
                       "torch_threads": torch.get_num_threads(), **soak(soak_manager, count, say)}
        finally:
            torch.set_num_threads(threads)
            logger.setLevel(level)
        print(report(figures), file=out, flush=True)
        print(f"  whole suite: {time.perf_counter() - started:.1f} s", file=out, flush=True)
        if json_file is not None:
            from pipelines.bench.core import clean_for_json

            Path(json_file).write_text(json.dumps(clean_for_json(figures), indent=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
