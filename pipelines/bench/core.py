"""`bench --suite core`: stage times, readout overhead, model swap and RSS growth, side by side in one run.

Everything is measured in this process, in one run, on a PipelineManager of its own: its models
folder is a temporary folder holding the benchmark's models (written here with seeded random
weights, so a real disk load is measured), its outputs go to a temporary folder, and it copies the
user's device and cache settings. Ratios always compare runs interleaved in the same process.

Sections:
1. per model: cold load, then per-stage times (text encode, denoise, VAE decode, save), step times;
2. readout overhead: telemetry on (a UI-like listener formatting every step line) vs off,
   interleaved with the same seed; target: median denoise time on/off <= 1.03x; then the live
   preview per call, cheap map vs TAESD (pipelines/bench/previews.py, no target);
3. model swap: load A, load B, load A again (from the RAM cache) vs A's cold load from disk;
   target <= 0.25x;
4. RSS growth over 20 generations after one warm-up; target < 2 %.
The bench reports targets; it never fails on them (exit code 0).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelines import devices
from pipelines.bench import models as bench_models
from pipelines.bench.system import census, census_growth, drop_page_cache, load_average, malloc_trim, rss_bytes
from pipelines.bench.tables import heading, mean, median, mib, ratio, seconds, table, verdict
from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.manager import PipelineManager
from pipelines.request import GenerationRequest
from pipelines.telemetry import Notice, PreviewReady, StageEnded, StageStarted, StepDone, format_step

READOUT_TARGET = 1.03  # telemetry on / off, median denoise time
SWAP_TARGET = 0.25  # swap back from the RAM cache / cold load from disk
RSS_TARGET = 0.02  # RSS growth over the measured generations
RSS_GENERATIONS = 20
PROMPT = "a lighthouse on a cliff at dusk, oil painting, dramatic light"
NEGATIVE = "blurry, low quality"
SEED = 1234


# -- the plan: what runs, at which size and step count ------------------------------------------------


@dataclass(frozen=True)
class ModelPlan:
    name: str
    label: str
    size: int
    steps: int
    pairs: int  # telemetry on/off pairs (every run is also a stage-time sample)
    folder: Path | None = None
    description: str = ""


@dataclass(frozen=True)
class Plan:
    mode: str
    models: list[ModelPlan]
    load_repeats: int
    rss_model: str
    rss_size: int
    rss_steps: int
    rss_generations: int = RSS_GENERATIONS
    skipped: list[str] = field(default_factory=list)

    def describe(self) -> list[list]:
        rows = [[m.label, f"{m.size}x{m.size}", m.steps, f"{m.pairs} on/off pairs (+1 warm-up)", m.description] for m in self.models]
        return rows


def make_plan(device: torch.device, quick: bool) -> dict:
    """(size, steps, on/off pairs) per model, load repeats and the RSS run's (size, steps).

    Chosen so the full run takes about 3 minutes on 2 idle CPU cores and --quick under 30 s. Odd pair
    counts give each arm of the readout comparison a true median.
    """
    gpu = device.type != "cpu"
    if gpu:
        return {
            "demo": (512, 20, 5) if not quick else (512, 10, 2),
            "mid": (512, 20, 5) if not quick else (512, 10, 2),
            "sd15-full": (512, 20, 3) if not quick else (512, 10, 1),
            "sdxl-full": (1024, 20, 3) if not quick else (1024, 8, 1),
            "load_repeats": 3 if not quick else 1,
            "rss": (512, 10) if not quick else (512, 4),
        }
    # CPU (2 cores): the mid-size UNet at 512x512 costs several seconds per step with CFG.
    return {
        "demo": (512, 20, 5) if not quick else (512, 8, 3),
        "mid": (512, 6, 3) if not quick else (256, 2, 3),
        "load_repeats": 3 if not quick else 1,
        "rss": (512, 2) if not quick else (128, 1),
    }


# -- a UI-like readout -------------------------------------------------------------------------------


class UiReadout:
    """What the Generate tab does with the events: keeps the stage, formats the step line, holds previews."""

    def __init__(self) -> None:
        self.stage = ""
        self.line = ""
        self.step_lines = 0
        self.previews = 0
        self.stages: dict[str, float] = {}
        self.notices: list[str] = []

    def __call__(self, event) -> None:
        if isinstance(event, StepDone):
            self.line = format_step(event)
            self.step_lines += 1
        elif isinstance(event, StageStarted):
            self.stage = event.stage
        elif isinstance(event, StageEnded):
            self.stages[event.stage] = self.stages.get(event.stage, 0.0) + event.seconds
        elif isinstance(event, PreviewReady):
            self.previews += 1
        elif isinstance(event, Notice):
            self.notices.append(event.text)


# -- the suite ---------------------------------------------------------------------------------------


class CoreBench:
    def __init__(self, user_manager: PipelineManager, quick: bool, out=None):
        self.user_manager = user_manager
        self.device = user_manager.device
        self.quick = quick
        self.out = out or sys.stdout
        self.figures: dict = {}
        self.targets: list[dict] = []
        self.started = time.perf_counter()
        self.workdir: Path | None = None
        self.manager: PipelineManager | None = None
        self.last_cpu_share = float("nan")

    # output

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def progress(self, text: str) -> None:
        self.say(f"  [{time.perf_counter() - self.started:6.1f} s] {text}")

    # setup

    def header(self) -> None:
        import diffusers
        import transformers

        load = load_average()
        self.figures["environment"] = {
            "timestamp": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "device": str(self.device),
            "device_description": devices.describe_device(self.device),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": load,
            "mode": "quick" if self.quick else "full",
        }
        env = self.figures["environment"]
        self.say(heading(f"Likeness bench --suite core ({env['mode']})"))
        self.say(f"  {env['timestamp']} · device: {env['device_description']} · torch {env['torch']} · diffusers {env['diffusers']} "
                 f"· transformers {env['transformers']} · torch threads {env['torch_threads']}")
        if load is not None:
            busy = load[0] > (os.cpu_count() or 1)
            self.say(f"  load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
                     + (" — the machine is busy with other work: timings carry its noise" if busy else ""))

    def build_models(self) -> Plan:
        settings = make_plan(self.device, self.quick)
        self.workdir = Path(tempfile.mkdtemp(prefix="likeness-bench-"))
        models_dir = self.workdir / "models"
        models_dir.mkdir()
        self.say(heading("Setup"))
        self.progress(f"temporary models folder {models_dir}")
        skipped: list[str] = []
        builds: dict[str, dict] = {}

        start = time.perf_counter()
        folder, description = bench_models.build_mid_size(models_dir)
        builds[bench_models.MID_NAME] = {"seconds": time.perf_counter() - start, "bytes": bench_models.folder_bytes(folder), "description": description}
        self.progress(f"built and saved {bench_models.MID_NAME} in {time.perf_counter() - start:.1f} s ({mib(builds[bench_models.MID_NAME]['bytes'])})")
        demo_dir = self.user_manager.prepare_demo_model()

        size, steps, pairs = settings["demo"]
        plans = [ModelPlan(DEMO_MODEL_NAME, "demo", size, steps, pairs, demo_dir, _unet_description(demo_dir))]
        size, steps, pairs = settings["mid"]
        plans.append(ModelPlan(bench_models.MID_NAME, "mid-size", size, steps, pairs, folder, description))

        if self.device.type == "cuda" and torch.cuda.is_available():
            for family, name, key in (("sd15", bench_models.SD15_FULL_NAME, "sd15-full"), ("sdxl", bench_models.SDXL_FULL_NAME, "sdxl-full")):
                problem = bench_models.full_configs_present(family)
                if problem:
                    skipped.append(f"{key}: {problem} (the configs come from pipelines.model_configs; run again once they exist)")
                    continue
                start = time.perf_counter()
                try:
                    full_folder, full_description = bench_models.build_full(family, models_dir, self.device)
                except Exception as error:  # noqa: BLE001 - a broken config must not cost the rest of the suite
                    skipped.append(f"{key}: could not be built from the bundled configs: {error.__class__.__name__}: {error}")
                    continue
                builds[name] = {"seconds": time.perf_counter() - start, "bytes": bench_models.folder_bytes(full_folder), "description": full_description}
                self.progress(f"built and saved {name} in {builds[name]['seconds']:.1f} s ({mib(builds[name]['bytes'])})")
                size, steps, pairs = settings[key]
                plans.append(ModelPlan(name, key, size, steps, pairs, full_folder, full_description))
        else:
            why = "this run's device is " + str(self.device) if torch.cuda.is_available() else "no CUDA on this machine"
            skipped.append(f"sd15-full, sdxl-full: the full SD 1.5 and SDXL architecture rows need a CUDA GPU ({why}; "
                           f"a CPU would need minutes per step)")
        self.figures["builds"] = builds
        rss_size, rss_steps = settings["rss"]
        plan = Plan("quick" if self.quick else "full", plans, settings["load_repeats"], bench_models.MID_NAME, rss_size, rss_steps, skipped=skipped)
        self.manager = self.bench_manager(models_dir, plan)
        return plan

    def bench_manager(self, models_dir: Path, plan: Plan) -> PipelineManager:
        user = self.user_manager.config
        needed = int(sum(bench_models.folder_bytes(m.folder) for m in plan.models if m.folder) * 1.25)
        ram_budget = max(user.ram_cache_bytes, needed)
        config = dataclasses.replace(
            user,
            models_dir=models_dir,
            outputs_dir=self.workdir / "outputs",
            device=str(self.device),
            ram_cache_bytes=ram_budget,
            include_hf_cache=False,
            # The exact-repeat latent cache would skip the denoise of the same-seed A/B repeats; the timed
            # sections also clear the prompt memo before each run, so every run does all of its work.
            latent_cache_entries=0,
        )
        manager = PipelineManager(config)
        note = "" if ram_budget == user.ram_cache_bytes else f" (raised from your {user.ram_cache_bytes / 2**30:.1f} GiB so every bench model stays cached)"
        self.progress(f"bench manager: device {manager.device}, RAM cache budget {ram_budget / 2**30:.1f} GiB{note}, "
                      f"preview every {config.preview_every} steps, latent cache off, outputs in {config.outputs_dir}")
        self.figures["bench_manager"] = {"device": str(manager.device), "ram_cache_bytes": ram_budget, "preview_every": config.preview_every,
                                         "vram_budget_bytes": manager.cache.vram_budget_bytes, "models_dir": str(models_dir)}
        return manager

    # helpers

    def request(self, model: ModelPlan | str, size: int, steps: int, seed: int = SEED) -> GenerationRequest:
        name = model.name if isinstance(model, ModelPlan) else model
        spec = self.manager.entry(name).family.spec
        return GenerationRequest(model=name, prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps, cfg_scale=spec.default_cfg,
                                 seed=seed, width=size, height=size, sampler=spec.default_sampler, save=True)

    def generate(self, request: GenerationRequest, telemetry: bool, fresh: bool = True):
        """One generation; `fresh` clears the memo caches first so the text encoder really runs."""
        if fresh:
            self.manager.clear_caches()
        readout = UiReadout() if telemetry else None
        cpu, wall = time.process_time(), time.perf_counter()
        result = self.manager.generate(request, listener=readout, telemetry=telemetry)
        # CPU seconds this process got per wall second per torch thread: ~1 on an idle machine, far
        # less when other processes compete for the cores (then every timing here is stretched).
        self.last_cpu_share = (time.process_time() - cpu) / max(time.perf_counter() - wall, 1e-9) / max(torch.get_num_threads(), 1)
        return result, readout

    def cold_load(self, name: str, folder: Path | None, drop_files: bool = True) -> tuple[float, object]:
        """Unload, forget the files' pages (unless told not to) and load from disk; wall seconds and the report."""
        self.manager.unload(name)
        if drop_files and folder is not None:
            drop_page_cache(folder)
        devices.synchronize(self.manager.device)
        start = time.perf_counter()
        report = self.manager.load(name)
        devices.synchronize(self.manager.device)
        return time.perf_counter() - start, report

    def timed_load(self, name: str) -> tuple[float, object]:
        devices.synchronize(self.manager.device)
        start = time.perf_counter()
        report = self.manager.load(name)
        devices.synchronize(self.manager.device)
        return time.perf_counter() - start, report

    def target(self, name: str, value: float, limit: float, comparison: str, passed: bool, note: str = "") -> None:
        self.targets.append({"name": name, "value": value, "target": f"{comparison} {limit:g}", "pass": passed, "note": note})

    # 1 + 2: stages and readout overhead

    def per_model(self, plan: Plan) -> None:
        self.say(heading("Per-model stages and readout overhead (measuring)"))
        # The first from_pretrained in a process also pays one-time imports and initialisation; keep it out of
        # the cold-load figures (a user pays it once per session, on whichever model comes first).
        first = plan.models[0]
        priming, report = self.cold_load(first.name, first.folder)
        self.manager.unload(first.name)
        self.figures["first_load_in_process"] = {"model": first.label, "seconds": priming}
        self.progress(f"first load in this process ({first.label}, one-time imports included, not counted): {priming:.2f} s")
        results = {}
        for model in plan.models:
            load_seconds, report = self.cold_load(model.name, model.folder)
            self.progress(f"{model.label}: cold load {report.source} {load_seconds:.2f} s; warm-up generation")
            self.generate(self.request(model, model.size, min(model.steps, 2)), telemetry=True)
            runs = []
            for pair in range(model.pairs):
                order = (True, False) if pair % 2 == 0 else (False, True)  # on/off, then off/on: drift cancels
                for telemetry in order:
                    result, readout = self.generate(self.request(model, model.size, model.steps), telemetry)
                    runs.append({
                        "telemetry": telemetry, "pair": pair,
                        "stage_seconds": dict(result.stage_seconds), "step_seconds": list(result.step_seconds),
                        "total_seconds": result.total_seconds, "peak_memory_bytes": result.peak_memory_bytes,
                        "memory_kind": result.memory_kind, "denoiser_dtype": result.denoiser_dtype, "vae_dtype": result.vae_dtype,
                        "step_lines": readout.step_lines if readout else 0, "previews": readout.previews if readout else 0,
                        "last_line": readout.line if readout else "", "cpu_share": self.last_cpu_share,
                    })
                    self.progress(f"{model.label}: pair {pair + 1}/{model.pairs} telemetry {'on ' if telemetry else 'off'} "
                                  f"denoise {result.stage_seconds.get('denoise', float('nan')):.3f} s")
            self.manager.unload(model.name)  # the next model's cold load starts from the same state
            results[model.label] = {
                "name": model.name, "size": model.size, "steps": model.steps, "pairs": model.pairs, "description": model.description,
                "load": {"seconds": load_seconds, "source": report.source, "size_bytes": report.size_bytes, "page_cache_dropped": True},
                "runs": runs, "load_average_after": load_average(),
            }
        self.figures["models"] = results
        self.report_stages(results)
        self.report_readout(results)

    def report_stages(self, results: dict) -> None:
        self.say(heading("Per-stage times (median over the telemetry-on runs; the UI's view)"))
        rows, step_rows = [], []
        for label, data in results.items():
            on = [r for r in data["runs"] if r["telemetry"]]
            stage = lambda key: median([r["stage_seconds"].get(key, 0.0) for r in on])  # noqa: E731
            total = median([r["total_seconds"] for r in on])
            steps = [s for r in on for s in r["step_seconds"]]
            later = [s for r in on for s in r["step_seconds"][1:]] or steps
            data["summary"] = {
                "load_seconds": data["load"]["seconds"], "text_encode": stage("text encode"), "denoise": stage("denoise"),
                "vae_decode": stage("VAE decode"), "save": stage("save"), "total": total,
                "step_mean": mean(steps), "step_median": median(steps), "step_mean_after_first": mean(later),
                "its_per_second": 1 / median(steps) if steps else None, "step_count": len(steps),
                "peak_memory_bytes": max(r["peak_memory_bytes"] or 0 for r in on), "memory_kind": on[0]["memory_kind"],
                "denoiser_dtype": on[0]["denoiser_dtype"], "vae_dtype": on[0]["vae_dtype"],
                "cpu_share": median([r["cpu_share"] for r in data["runs"]]),
            }
            s = data["summary"]
            rows.append([label, f"{data['size']}px", data["steps"], seconds(s["load_seconds"]), seconds(s["text_encode"]), seconds(s["denoise"]),
                         seconds(s["vae_decode"]), seconds(s["save"]), seconds(s["total"])])
            step_rows.append([label, s["step_count"], seconds(s["step_mean"]), seconds(s["step_median"]), seconds(s["step_mean_after_first"]),
                              f"{s['its_per_second']:.2f}", f"{s['denoiser_dtype']}/{s['vae_dtype']}", f"{mib(s['peak_memory_bytes'])} ({s['memory_kind']})",
                              f"{s['cpu_share']:.2f}"])
        self.say(table(["model", "size", "steps", "load (disk)", "text encode", "denoise", "VAE decode", "save", "total"], rows))
        self.say("  load (disk): one cold load, files' page cache dropped first (see the swap section for repeats)")
        self.say("")
        self.say(table(["model", "steps timed", "mean step", "median step", "mean w/o 1st", "it/s (median)", "UNet/VAE dtype", "peak memory", "CPU share"], step_rows))
        if self.device.type == "cpu":
            self.say("  CPU share: CPU seconds this process got per wall second per torch thread (median over runs); near 1 on an\n"
                     "  idle machine. Well below 1, other processes took the cores and every time above is stretched by them.")
        for label, data in results.items():
            line = next((r["last_line"] for r in data["runs"] if r["telemetry"]), "")
            self.say(f"  {label} readout line: {line}")

    def report_readout(self, results: dict) -> None:
        self.say(heading(f"Readout overhead: telemetry on vs off (target on/off <= {READOUT_TARGET:.2f}x)"))
        rows = []
        for label, data in results.items():
            on = [r["stage_seconds"]["denoise"] for r in data["runs"] if r["telemetry"]]
            off = [r["stage_seconds"]["denoise"] for r in data["runs"] if not r["telemetry"]]
            paired = []
            for pair in range(data["pairs"]):
                a = [r["stage_seconds"]["denoise"] for r in data["runs"] if r["pair"] == pair and r["telemetry"]]
                b = [r["stage_seconds"]["denoise"] for r in data["runs"] if r["pair"] == pair and not r["telemetry"]]
                if a and b and b[0] > 0:
                    paired.append(a[0] / b[0])
            value = median(on) / median(off)
            best = min(on) / min(off)
            spread = (max(off) - min(off)) / median(off) if len(off) > 1 else float("nan")
            noisy = not math.isnan(spread) and spread > READOUT_TARGET - 1
            data["readout"] = {"on_median": median(on), "off_median": median(off), "ratio": value, "paired_ratios": paired,
                               "paired_median": median(paired), "min_ratio": best, "off_spread": spread, "noisy": noisy,
                               "step_lines_per_run": data["runs"][0]["step_lines"], "previews_per_run": data["runs"][0]["previews"]}
            passed = value <= READOUT_TARGET
            note = f"noisy: off runs range {spread * 100:.0f} % > {(READOUT_TARGET - 1) * 100:.0f} %" if noisy else ""
            self.target(f"readout overhead ({label})", value, READOUT_TARGET, "<=", passed, note)
            on_run = next(r for r in data["runs"] if r["telemetry"])
            rows.append([label, f"{data['pairs']}x2", data["steps"], seconds(median(on)), seconds(median(off)), ratio(value), ratio(best),
                         " ".join(f"{p:.3f}" for p in paired), f"{spread * 100:.1f} %" if not math.isnan(spread) else "-",
                         f"{on_run['step_lines']} lines, {on_run['previews']} previews", verdict(passed) + (" (noisy)" if noisy else "")])
        self.say(table(["model", "runs", "steps", "denoise on", "denoise off", "on/off median", "on/off min", "per pair", "off range",
                        "readout per run", "verdict"], rows))
        sync = "a per-step torch.cuda.synchronize (the readout's real step time)" if self.device.type == "cuda" else (
            "no device synchronization (the CPU runs synchronously), so the difference is only the events, the step-line "
            "formatting and the latent previews")
        self.say(f"  on: telemetry=True with a UI-like listener (formats every step line, keeps previews); off: telemetry=False.\n"
                 f"  Same seed every run; pairs alternate on/off and off/on. On {self.device.type} 'on' adds {sync}.\n"
                 f"  'off range' is the run-to-run spread (max-min)/median of the off runs: a ratio within it is noise, not overhead; 'on/off min'\n"
                 f"  compares the fastest run of each arm (contention only ever adds time). The verdict uses the medians.")

    def preview_cost(self) -> None:
        """The live preview per call, cheap vs TAESD (pipelines/bench/previews.py); informative, no target."""
        from pipelines.bench import previews

        self.say(heading(previews.TITLE))
        self.figures["previews"] = previews.measure(self.device, self.quick)
        for line in previews.report(self.figures["previews"]):
            self.say(line)

    # 3: model swap

    def swap(self, plan: Plan) -> None:
        self.say(heading(f"Model swap: back from the RAM cache vs a cold load from disk (target <= {SWAP_TARGET:.2f}x)"))
        by_label = {m.label: m for m in plan.models}
        pairs = [(by_label["mid-size"], by_label["demo"])]
        if "sd15-full" in by_label and "sdxl-full" in by_label:
            pairs.append((by_label["sd15-full"], by_label["sdxl-full"]))
        results = []
        for a, b in pairs:
            results.append(self.swap_pair(a, b, plan.load_repeats))
        self.figures["swap"] = results
        rows = []
        for item in results:
            base = median(item["cold_warm_files"])
            for key, label in (("cold_dropped", "cold, page cache dropped"), ("cold_warm_files", "cold, files in page cache"),
                               ("load_b", f"load B ({item['b']}) meanwhile"), ("swap_back", "swap back to A (cached)"),
                               ("swap_back_on_device", "swap back, A still on device")):
                values = item.get(key)
                if not values:
                    continue
                source = ", ".join(sorted(set(item["sources"].get(key, []))))
                relative = "1x" if key == "cold_warm_files" else "-" if key == "load_b" else ratio(median(values) / base)
                rows.append([item["a"], label, source, len(values), seconds(median(values)), seconds(min(values)), relative])
            value = median(item["swap_back"]) / base
            item["ratio"] = value
            item["ratio_vs_dropped"] = median(item["swap_back"]) / median(item["cold_dropped"])
            passed = value <= SWAP_TARGET
            self.target(f"model swap ({item['a']})", value, SWAP_TARGET, "<=", passed, "swap back / cold load with the files in the page cache")
        self.say(table(["model A", "load", "source", "n", "median", "min", "vs cold"], rows))
        for item in results:
            passed = item["ratio"] <= SWAP_TARGET
            self.say(f"  {item['a']}: swap back {ratio(item['ratio'])} of a cold load (files cached), "
                     f"{ratio(item['ratio_vs_dropped'])} of a cold load (page cache dropped): {verdict(passed)}")
        if self.device.type == "cpu":
            self.say("  What 'from RAM' means here: on a CPU-only machine the compute device IS the RAM level. A pipeline in the\n"
                     "  RAM cache is already where it runs, so loading it is a cache lookup with no copy at all (microseconds);\n"
                     "  the cold load reads the safetensors files, builds the modules and fills in the weights.\n"
                     "  On a GPU the same swap back is a host-to-device copy of all weights (about size / PCIe bandwidth,\n"
                     "  e.g. a fraction of a second for SD 1.5 in fp16), still well below a disk load.")
        else:
            self.say("  What 'from RAM' means here: the pipeline was in the CPU RAM cache (moved out of VRAM to make room,\n"
                     "  with a VRAM budget set for the test to hold one of the two models); loading it is a host-to-device copy\n"
                     "  of all weights. 'A still on device' (a VRAM budget holding both) is free. On a CPU-only machine\n"
                     "  the RAM level is the device, so a swap back there is a lookup with no copy (microseconds).")
        self.say("  Cold loads: unload + gc, then from_pretrained of the diffusers folder"
                 + (" and the copy to the GPU." if self.device.type != "cpu" else "."))

    def swap_pair(self, a: ModelPlan, b: ModelPlan, repeats: int) -> dict:
        cache = self.manager.cache
        item = {"a": a.label, "b": b.label, "cold_dropped": [], "cold_warm_files": [], "load_b": [], "swap_back": [],
                "swap_back_on_device": [], "sources": {}, "repeats": repeats}

        def record(key: str, wall: float, report) -> None:
            item[key].append(wall)
            item["sources"].setdefault(key, []).append(report.source)
            item.setdefault(key + "_reported", []).append(report.seconds)

        original_budget = cache.vram_budget_bytes
        try:
            for repeat in range(repeats):
                self.manager.unload(b.name)
                record("cold_dropped", *self.cold_load(a.name, a.folder, drop_files=True))
                record("cold_warm_files", *self.cold_load(a.name, a.folder, drop_files=False))
                if cache.uses_gpu:
                    # Room for one of the two: loading B moves A back to CPU RAM, the RAM level of the cache.
                    size_a = next(r.size_bytes for r in cache.records() if r.name == a.name)
                    size_b = self.figures["models"][b.label]["load"]["size_bytes"]
                    cache.vram_budget_bytes = max(size_a, size_b) + min(size_a, size_b) // 2
                record("load_b", *self.timed_load(b.name))
                record("swap_back", *self.timed_load(a.name))
                if cache.uses_gpu:
                    cache.vram_budget_bytes = original_budget
                    self.timed_load(b.name)
                    record("swap_back_on_device", *self.timed_load(a.name))
                self.progress(f"swap {a.label}<->{b.label} {repeat + 1}/{repeats}: cold {item['cold_dropped'][-1]:.2f} s "
                              f"(files cached {item['cold_warm_files'][-1]:.2f} s), back from {item['sources']['swap_back'][-1]} "
                              f"{seconds(item['swap_back'][-1])}")
        finally:
            cache.vram_budget_bytes = original_budget
        return item

    # 4: RSS growth

    def rss_growth(self, plan: Plan) -> None:
        n = plan.rss_generations
        self.say(heading(f"RSS growth over {n} generations (target < {RSS_TARGET * 100:.0f} %)"))
        model = next(m for m in plan.models if m.name == plan.rss_model)
        self.manager.load(model.name)
        self.progress(f"{model.label} at {plan.rss_size}x{plan.rss_size}, {plan.rss_steps} steps, telemetry on with the UI-like listener, "
                      f"a new seed each run, images saved, memo caches as configured; 1 warm-up + {n} measured")
        self.generate(self.request(model, plan.rss_size, plan.rss_steps, SEED), telemetry=True, fresh=False)
        before = census()
        readings = [rss_bytes()]
        device_before = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else None
        start = time.perf_counter()
        for index in range(n):
            self.generate(self.request(model, plan.rss_size, plan.rss_steps, SEED + 1 + index), telemetry=True, fresh=False)
            readings.append(rss_bytes())
        elapsed = time.perf_counter() - start
        after = census()
        growth = (readings[-1] - readings[0]) / readings[0]
        trimmed = None
        if malloc_trim():
            trimmed = rss_bytes()
        half = len(readings) // 2
        first_half = readings[half] - readings[0]
        second_half = readings[-1] - readings[half]
        device_after = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else None
        xs = range(len(readings))
        x_mean, y_mean = mean(list(xs)), mean(readings)
        slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, readings)) / sum((x - x_mean) ** 2 for x in xs)
        memo = {stats.name: {"entries": stats.entries, "bytes": stats.bytes, "hits": stats.hits, "misses": stats.misses}
                for stats in (cache.stats() for cache in self.manager.caches())}
        data = {
            "model": model.label, "size": plan.rss_size, "steps": plan.rss_steps, "generations": n, "seconds": elapsed,
            "rss_readings": readings, "start": readings[0], "end": readings[-1], "peak": max(readings), "growth_fraction": growth,
            "growth_first_half": first_half, "growth_second_half": second_half, "after_malloc_trim": trimmed,
            "max_growth_fraction": (max(readings) - readings[0]) / readings[0], "trend_bytes_per_generation": slope,
            "trend_growth_fraction": slope * n / readings[0],
            "tensors_before": before["tensors"], "tensors_after": after["tensors"],
            "tensor_bytes_before": before["tensor_bytes"], "tensor_bytes_after": after["tensor_bytes"],
            "objects_before": before["objects"], "objects_after": after["objects"],
            "types_grown": census_growth(before, after), "memo_caches": memo,
            "device_allocated_before": device_before, "device_allocated_after": device_after,
            "outputs_written": sum(1 for _ in Path(self.manager.config.outputs_dir).rglob("*.png")),
        }
        passed = growth < RSS_TARGET
        if not passed:
            data["investigation"] = self.investigate(model, plan)
        self.figures["rss"] = data
        self.target("RSS growth", growth, RSS_TARGET, "<", passed,
                    f"over {n} generations; trend {data['trend_growth_fraction'] * 100:+.2f} %, highest reading {data['max_growth_fraction'] * 100:+.2f} %")
        self.report_rss(data, passed)

    def investigate(self, model: ModelPlan, plan: Plan, runs: int = 5) -> dict:
        """Where does memory grow? tracemalloc (Python allocations) over a few more generations."""
        self.progress(f"RSS target missed: tracing Python allocations over {runs} more generations")
        tracemalloc.start(12)
        first = tracemalloc.take_snapshot()
        rss_start = rss_bytes()
        for index in range(runs):
            self.generate(self.request(model, plan.rss_size, plan.rss_steps, SEED + 1000 + index), telemetry=True, fresh=False)
        rss_end = rss_bytes()
        second = tracemalloc.take_snapshot()
        bookkeeping = tracemalloc.get_tracemalloc_memory()  # tracemalloc's own tables live in the RSS too
        tracemalloc.stop()
        stats = second.compare_to(first, "lineno")
        top = [{"where": str(s.traceback[0]), "size_diff": s.size_diff, "count_diff": s.count_diff} for s in stats[:10] if s.size_diff > 0]
        traced = sum(s.size_diff for s in stats)
        return {"runs": runs, "rss_growth": rss_end - rss_start - bookkeeping, "tracemalloc_bookkeeping": bookkeeping,
                "python_traced_growth": traced, "top": top}

    def report_rss(self, data: dict, passed: bool) -> None:
        readings = data["rss_readings"]
        rows = [[f"after warm-up", mib(readings[0]), "-"]]
        for index in sorted({len(readings) // 4, len(readings) // 2, 3 * len(readings) // 4, len(readings) - 1}):
            if index:
                rows.append([f"after {index} generations", mib(readings[index]), f"{(readings[index] - readings[0]) / 2**20:+.1f} MiB"])
        if data["after_malloc_trim"] is not None:
            rows.append(["after malloc_trim (diagnostic)", mib(data["after_malloc_trim"]), f"{(data['after_malloc_trim'] - readings[0]) / 2**20:+.1f} MiB"])
        self.say(table(["RSS (gc.collect() first)", "RSS", "growth"], rows))
        per_gen = (readings[-1] - readings[0]) / max(len(readings) - 1, 1)
        self.say(f"  growth {data['growth_fraction'] * 100:+.2f} % ({(readings[-1] - readings[0]) / 2**20:+.1f} MiB, "
                 f"{per_gen / 2**10:+.0f} KiB/generation; first half {data['growth_first_half'] / 2**20:+.1f} MiB, "
                 f"second half {data['growth_second_half'] / 2**20:+.1f} MiB): {verdict(passed)}")
        self.say(f"  highest reading {data['max_growth_fraction'] * 100:+.2f} % above the start; least-squares trend "
                 f"{data['trend_bytes_per_generation'] / 2**10:+.0f} KiB/generation ({data['trend_growth_fraction'] * 100:+.2f} % over "
                 f"{data['generations']} generations)")
        if data["max_growth_fraction"] >= RSS_TARGET and passed:
            self.say("  RSS goes up and down between readings while live tensors and objects stay level: freed buffers the C\n"
                     "  allocator keeps for a while and then returns (steps of 16 MiB and more), not a leak; the trend tells.")
        self.say(f"  {data['generations']} generations in {data['seconds']:.1f} s at {data['size']}x{data['size']}, {data['steps']} steps; "
                 f"live tensors {data['tensors_before']} -> {data['tensors_after']} ({mib(data['tensor_bytes_before'])} -> "
                 f"{mib(data['tensor_bytes_after'])}); gc objects {data['objects_before']:,} -> {data['objects_after']:,}")
        if data["types_grown"]:
            self.say("  object types that grew: " + ", ".join(f"{name} +{count}" for name, count in data["types_grown"]))
        memo = ", ".join(f"{name}: {info['entries']} entries ({mib(info['bytes'])})" for name, info in data["memo_caches"].items())
        self.say(f"  memo caches at the end: {memo or 'none'}; PNGs written: {data['outputs_written']}")
        if data["device_allocated_before"] is not None:
            self.say(f"  GPU allocated: {mib(data['device_allocated_before'])} -> {mib(data['device_allocated_after'])}")
        if "investigation" in data:
            inv = data["investigation"]
            self.say(f"  investigation: {inv['runs']} more generations grew RSS by {inv['rss_growth'] / 2**20:+.1f} MiB "
                     f"(tracemalloc's own {inv['tracemalloc_bookkeeping'] / 2**20:.1f} MiB taken off), "
                     f"of which Python objects (tracemalloc) {inv['python_traced_growth'] / 2**20:+.2f} MiB; top sites:")
            for site in inv["top"]:
                self.say(f"    {site['size_diff'] / 2**10:+9.1f} KiB  {site['count_diff']:+6d} blocks  {site['where']}")
            trimmed = data["after_malloc_trim"]
            if trimmed is not None and trimmed - readings[0] < RSS_TARGET * readings[0]:
                self.say("  malloc_trim gives the growth back: it is freed memory the C allocator keeps (heap fragmentation\n"
                         "  by tensor buffers), not live objects. Setting MALLOC_ARENA_MAX / a trim after each generation would cap it.")
            elif data["tensors_after"] > data["tensors_before"]:
                self.say(f"  live tensors grew by {data['tensors_after'] - data['tensors_before']} "
                         f"({(data['tensor_bytes_after'] - data['tensor_bytes_before']) / 2**20:+.1f} MiB): something keeps tensors per generation.")
            else:
                self.say("  the growth survives malloc_trim and is neither Python objects nor live tensors: native allocations\n"
                         "  (torch/oneDNN kernel caches per new shape, or a library's own pools).")

    # summary and JSON

    def summary(self, plan: Plan) -> None:
        self.say(heading("Targets"))
        rows = []
        for item in self.targets:
            value = f"{item['value'] * 100:+.2f} %" if item["name"] == "RSS growth" else ratio(item["value"])
            rows.append([item["name"], value, item["target"] if item["name"] != "RSS growth" else f"< {RSS_TARGET * 100:.0f} %",
                         verdict(item["pass"]), item["note"]])
        self.say(table(["target", "measured", "target", "verdict", "note"], rows, align="lrrll"))
        for line in plan.skipped:
            self.say(f"  skipped: {line}")
        shares = [r["cpu_share"] for data in self.figures.get("models", {}).values() for r in data.get("runs", [])]
        if self.device.type == "cpu" and shares and median(shares) < 0.8:
            self.say(f"  WARNING: this process got {median(shares):.2f} of its CPU threads' time (median over runs): other\n"
                     f"  processes competed for the cores, so times and timing ratios above carry their noise. Run again on an idle machine.")
        load = load_average()
        self.figures["environment"]["load_average_at_end"] = load
        self.figures["environment"]["wall_seconds"] = time.perf_counter() - self.started
        self.say(f"  whole suite: {time.perf_counter() - self.started:.1f} s"
                 + (f"; load average at the end {load[0]:.2f}" if load else ""))

    def run(self, json_file: Path | None) -> int:
        self.header()
        try:
            plan = self.build_models()
            self.figures["plan"] = {
                "mode": plan.mode, "load_repeats": plan.load_repeats, "rss": {"model": plan.rss_model, "size": plan.rss_size, "steps": plan.rss_steps,
                                                                             "generations": plan.rss_generations},
                "models": [{"name": m.name, "label": m.label, "size": m.size, "steps": m.steps, "pairs": m.pairs, "description": m.description}
                           for m in plan.models],
                "skipped": plan.skipped,
            }
            self.say(table(["model", "size", "steps", "runs", "architecture"], plan.describe(), align="lrrll"))
            self.say(f"  model swap: {plan.load_repeats} repeat(s); RSS: {plan.rss_generations} generations of the mid-size model at "
                     f"{plan.rss_size}x{plan.rss_size}, {plan.rss_steps} steps")
            for line in plan.skipped:
                self.say(f"  skipped: {line}")
            with quiet_engine_log():
                self.per_model(plan)
                self.preview_cost()
                self.swap(plan)
                self.rss_growth(plan)
            self.summary(plan)
            self.figures["targets"] = self.targets
        finally:
            self.cleanup()
        if json_file is not None:
            json_file = Path(json_file)
            if json_file.parent and not json_file.parent.exists():
                json_file.parent.mkdir(parents=True, exist_ok=True)
            json_file.write_text(json.dumps(clean_for_json(self.figures), indent=2))
            self.say(f"  figures written to {json_file}")
        return 0

    def cleanup(self) -> None:
        if self.manager is not None:
            self.manager.cache.clear()
            self.manager = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def quiet_engine_log():
    """The manager logs every load at INFO; the bench prints its own lines. --verbose keeps them."""
    logger = logging.getLogger("likeness")
    previous = logger.level
    if not logger.isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


def clean_for_json(value):
    """Strict JSON: tuples to lists, inf/NaN to null, paths and anything else odd to strings."""
    if isinstance(value, dict):
        return {str(k): clean_for_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_for_json(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (int, str, bool)) or value is None:
        return value
    return str(value)


def run(manager: PipelineManager, json_file: Path | None = None, quick: bool = False, out=None) -> int:
    return CoreBench(manager, quick, out).run(json_file)


def _unet_description(folder: Path) -> str:
    """"tiny SD 1.5 layout (64/96/128/128), cross-attn 128": read from the folder, so the row names
    whichever demo the app lists (the trained one or the random one)."""
    config = json.loads((Path(folder) / "unet" / "config.json").read_text())
    widths = "/".join(str(width) for width in config["block_out_channels"])
    return f"tiny SD 1.5 layout ({widths}), cross-attn {config['cross_attention_dim']}"
