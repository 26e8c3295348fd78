"""`python app.py bench --suite pulid`: what face reference costs, measured side by side in one run.

Per family (tiny SDXL and FLUX.1 pipelines, face files in the official layouts with seeded random
weights, the real insightface/onnxruntime, BiSeNet and EVA-CLIP code):
- VAE decode time with PuLID on vs off (target <= 1.05x): the face models must have left the
  device before decoding, so the decoder runs exactly as without a face;
- denoise step time with PuLID on vs off (the ID cross-attention's real cost);
- the face stage cold (detector, parsing, EVA-CLIP, IDFormer) vs memoized (same photo again);
- peak memory with vs without (GPU allocator peak; process RSS on a CPU).
On and off runs alternate (off, on, on, off, ...) with the same seed, so drift in the machine's
speed falls on both arms alike; the figures are medians.

Full-size rows (SDXL/FLUX.1 and PuLID at their real sizes) need a CUDA GPU and official-size
random weights; on a CPU they would take minutes per step, so they are skipped with a note.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipelines.bench.system import print_suite_header
from pipelines.bench.tables import heading, median, mib, ratio, seconds, table, verdict
from pipelines.bench.tiny_face import HANKS, TINY_IDFORMER, write_face_models
from pipelines.bench.tiny_models import build_tiny_flux, build_tiny_sdxl, save_tiny_pipeline
from pipelines.face.options import FaceOptions
from pipelines.request import GenerationRequest

DECODE_TARGET = 1.05
FAMILIES = {"sdxl": ("Euler", build_tiny_sdxl), "flux": ("Flow Euler", build_tiny_flux)}


def _request(family: str, steps: int, size: int, seed: int = 21) -> GenerationRequest:
    sampler = FAMILIES[family][0]
    return GenerationRequest(model=f"bench-{family}", prompt="a portrait photo of a person", steps=steps, width=size,
                             height=size, seed=seed, cfg_scale=3.0 if family == "sdxl" else 1.0, sampler=sampler, save=False)


def build_models(models_dir: Path) -> None:
    pipes = {}
    for family, (_, build) in FAMILIES.items():
        pipes[family] = build()
        save_tiny_pipeline(pipes[family], models_dir / f"bench-{family}")
    write_face_models(models_dir, sdxl_unet=pipes["sdxl"].unet, flux_transformer=pipes["flux"].transformer)


def measure_family(manager, family: str, pairs: int, steps: int, size: int, say) -> dict:
    request = _request(family, steps, size)
    face = FaceOptions(photos=(str(HANKS),), id_weight=1.0)
    manager.generate(request)  # warm-up: load, first-call costs
    manager.generate(request, face=face)
    cold, memo = [], []
    for _ in range(max(2, pairs // 2)):
        manager.face.memo.clear()
        cold.append(manager.generate(request, face=face).stage_seconds["face embed"])
        memo.append(manager.generate(request, face=face).stage_seconds["face embed"])
    arms: dict[str, list] = {"off": [], "on": []}
    for pair in range(pairs):
        order = ("off", "on") if pair % 2 == 0 else ("on", "off")
        for arm in order:
            result = manager.generate(request, face=face if arm == "on" else None)
            arms[arm].append(result)
        say(f"{family}: pair {pair + 1}/{pairs} decode off {seconds(arms['off'][-1].stage_seconds['VAE decode'])}, "
            f"on {seconds(arms['on'][-1].stage_seconds['VAE decode'])}")

    def stat(arm: str, pick) -> float:
        return median([pick(result) for result in arms[arm]])

    figures = {
        "steps": steps, "size": size, "pairs": pairs,
        "decode_off": stat("off", lambda r: r.stage_seconds["VAE decode"]),
        "decode_on": stat("on", lambda r: r.stage_seconds["VAE decode"]),
        "step_off": stat("off", lambda r: median(r.step_seconds)),
        "step_on": stat("on", lambda r: median(r.step_seconds)),
        "peak_off": stat("off", lambda r: r.peak_memory_bytes),
        "peak_on": stat("on", lambda r: r.peak_memory_bytes),
        "memory_kind": arms["on"][0].memory_kind,
        "vae_dtype_off": arms["off"][0].vae_dtype, "vae_dtype_on": arms["on"][0].vae_dtype,
        "face_cold": median(cold), "face_memo": median(memo),
        "pulid_stats": arms["on"][0].hook_stats.get("pulid", {}),
    }
    figures["decode_ratio"] = figures["decode_on"] / figures["decode_off"]
    figures["step_ratio"] = figures["step_on"] / figures["step_off"]
    figures["peak_ratio"] = figures["peak_on"] / figures["peak_off"]
    figures["face_ratio"] = figures["face_memo"] / figures["face_cold"]
    return figures


def report(results: dict, device: torch.device) -> str:
    rows, targets = [], []
    for family, f in results.items():
        rows.append([family, f"{f['size']}px x {f['steps']}", seconds(f["decode_off"]), seconds(f["decode_on"]), ratio(f["decode_ratio"]),
                     seconds(f["step_off"]), seconds(f["step_on"]), ratio(f["step_ratio"]),
                     seconds(f["face_cold"]), seconds(f["face_memo"]), mib(f["peak_off"]), mib(f["peak_on"]), ratio(f["peak_ratio"])])
        targets.append([f"VAE decode on/off ({family})", ratio(f["decode_ratio"]), f"<= {DECODE_TARGET}",
                        verdict(f["decode_ratio"] <= DECODE_TARGET), f"decode dtype off {f['vae_dtype_off']}, on {f['vae_dtype_on']}"])
    kind = next(iter(results.values()))["memory_kind"]
    lines = [
        heading("PuLID on vs off (medians of interleaved pairs)"),
        table(["family", "run", "decode off", "decode on", "x", "step off", "step on", "x", "face cold", "face memo",
               "peak off", "peak on", "x"], rows),
        f"  peak memory: {kind}. face cold: detector + parsing + EVA-CLIP + IDFormer; memo: the same photo again.",
        heading("Targets"),
        table(["target", "measured", "target", "verdict", "note"], targets, "lrrll"),
    ]
    if device.type != "cuda":
        lines.append("  skipped: full-size SDXL / FLUX.1 + PuLID rows need a CUDA GPU (minutes per step on a CPU).")
    return "\n".join(lines)


def run(manager, json_file: Path | None = None, quick: bool = False, out=None) -> int:
    from pipelines.manager import ManagerConfig, PipelineManager

    out = out or sys.stdout
    started = time.perf_counter()

    def say(text: str) -> None:
        print(f"  [{time.perf_counter() - started:6.1f} s] {text}", file=out, flush=True)

    print_suite_header(out, f"Likeness bench --suite pulid ({'quick' if quick else 'full'})", manager.device)
    workdir = Path(tempfile.mkdtemp(prefix="likeness-bench-pulid-"))
    try:
        models = workdir / "models"
        build_models(models)
        say(f"tiny SDXL + FLUX.1 and the face files (official layouts, random weights) in {models}")
        bench_manager = PipelineManager(ManagerConfig(
            models_dir=models, outputs_dir=workdir / "outputs", cache_dir=workdir / "cache", device=str(manager.device),
            include_hf_cache=False, latent_cache_entries=0, preview_every=0))
        bench_manager.face.idformer_config = TINY_IDFORMER
        pairs, steps = (2, 2) if quick else (6, 4)
        results = {family: measure_family(bench_manager, family, pairs, steps, 256, say) for family in FAMILIES}
        print(report(results, manager.device), file=out, flush=True)
        print(f"  whole suite: {time.perf_counter() - started:.1f} s", file=out, flush=True)
        if json_file is not None:
            Path(json_file).write_text(json.dumps({"suite": "pulid", "device": str(manager.device), "families": results},
                                                  indent=2, default=str))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
