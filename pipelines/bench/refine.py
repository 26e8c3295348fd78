"""`python app.py bench --suite refine`: what the refining modes cost, side by side in one run.

- img2img at strength 0.5 vs text-to-image at the same steps: the denoise stage's time (target: at
  most 0.55x: img2img runs the last half of the schedule) and the init image's VAE encode;
- inpainting (a quarter of the image masked) at strength 0.75 vs text-to-image;
- hires fix 2x (Latent and Lanczos): the time of each pass (first denoise, hires pass, VAE decode)
  and the peak memory, with and without the tiled VAE;
- the face detailer: its cost per face, and the ArcFace similarity of the face to the reference with
  PuLID on, without and with the detailer (tiny face models: a check of the mechanism, not of quality).

Tiny SD 1.5 / SDXL / FLUX.1 pipelines (seeded random weights: the same code paths as real models);
the arms alternate round by round with the same seed; figures are medians.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipelines.bench.system import print_suite_header
from pipelines.bench.tables import heading, median, ratio, seconds, table
from pipelines.bench.tiny_models import BUILDERS, SAMPLERS, SIZES, save_tiny_pipeline
from pipelines.request import GenerationRequest

IMG2IMG_TARGET = 0.55  # img2img denoise at strength 0.5 / text-to-image denoise, same steps


def test_picture(size: int) -> Image.Image:
    """A gradient with a disc: structure for the VAE to keep."""
    x = np.linspace(0, 255, size, dtype=np.float32)
    rgb = np.stack([np.add.outer(x, x) / 2, np.add.outer(x[::-1], x) / 2, np.full((size, size), 96.0)], axis=-1).astype(np.uint8)
    image = Image.fromarray(rgb)
    ImageDraw.Draw(image).ellipse([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill=(200, 60, 60))
    return image


def quarter_mask(size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle([size // 4, size // 4, 3 * size // 4 - 1, 3 * size // 4 - 1], fill=255)
    return mask


def arms(family: str, steps: int) -> dict[str, GenerationRequest]:
    size = SIZES[family]
    base = GenerationRequest(model=f"bench-{family}", prompt="a portrait photo", steps=steps, width=size, height=size, seed=5,
                             cfg_scale=3.0, sampler=SAMPLERS[family], save=False)
    picture = test_picture(size)
    return {
        "txt2img": base,
        "img2img 0.5": GenerationRequest(**{**base.__dict__, "init_image": picture, "denoising_strength": 0.5}),
        "inpaint 0.75": GenerationRequest(**{**base.__dict__, "init_image": picture, "mask": quarter_mask(size), "denoising_strength": 0.75}),
    }


def measure_family(manager, family: str, rounds: int, steps: int, say) -> dict:
    requests = arms(family, steps)
    for request in requests.values():  # warm-up: load, first calls of each pipeline
        manager.generate(request)
    figures = {name: {"denoise": [], "img encode": [], "total": [], "steps": []} for name in requests}
    for _ in range(rounds):
        for name, request in requests.items():
            result = manager.generate(request)
            figures[name]["denoise"].append(result.stage_seconds.get("denoise", 0.0))
            figures[name]["img encode"].append(result.stage_seconds.get("img encode", 0.0))
            figures[name]["total"].append(result.total_seconds)
            figures[name]["steps"].append(len(result.step_seconds))
    medians = {name: {key: median(values) for key, values in arm.items()} for name, arm in figures.items()}
    say(f"{family}: denoise txt2img {medians['txt2img']['denoise']:.4f} s, img2img 0.5 {medians['img2img 0.5']['denoise']:.4f} s")
    return medians


HIRES_FAMILY = "sdxl"  # the tiny SDXL at 256 px -> 512 px: the largest VAE decode of the tiny models


def measure_hires(manager, rounds: int, steps: int, say) -> dict:
    """Per-pass seconds and peak memory of a 2x hires fix, untiled and tiled VAE, Latent and Lanczos upscalers."""
    size = SIZES[HIRES_FAMILY]
    base = GenerationRequest(model=f"bench-{HIRES_FAMILY}", prompt="a portrait photo", steps=steps, width=size, height=size, seed=5,
                             cfg_scale=3.0, sampler=SAMPLERS[HIRES_FAMILY], save=False, hires_scale=2.0, hires_denoising=0.5)
    rows = {}
    for upscaler in ("Latent", "Lanczos"):
        for tiled in (False, True):
            manager.config.vae_tiling = tiled
            request = GenerationRequest(**{**base.__dict__, "hires_upscaler": upscaler})
            manager.generate(request)  # warm-up
            runs = [manager.generate(request) for _ in range(rounds)]
            rows[f"{upscaler}{', tiled VAE' if tiled else ''}"] = {
                "first pass": median([r.stage_seconds.get("denoise", 0.0) for r in runs]),
                "hires pass": median([r.stage_seconds.get("hires pass", 0.0) for r in runs]),
                "VAE decode": median([r.stage_seconds.get("VAE decode", 0.0) for r in runs]),
                "total": median([r.total_seconds for r in runs]),
                "peak_bytes": median([r.peak_memory_bytes or 0 for r in runs]),
                "memory_kind": runs[0].memory_kind,
                "size": list(runs[0].images[0].image.size),
            }
    manager.config.vae_tiling = False
    say(f"hires 2x: Latent total {rows['Latent']['total']:.3f} s")
    return rows


def measure_detailer(models_dir: Path, manager_config, rounds: int, steps: int, say) -> dict:
    """The face detailer on the tiny SDXL with PuLID on: seconds per face, and ArcFace similarity to the
    reference without and with the detailer (the tiny detector plants two faces in every picture)."""
    from pipelines.bench import tiny_onnx
    from pipelines.bench.tiny_face import HANKS, TINY_IDFORMER, write_face_models
    from pipelines.experiments.fidelity import ArcFaceScorer
    from pipelines.face.options import FaceOptions
    from pipelines.manager import PipelineManager

    det = tiny_onnx.DET_SIZE
    faces = ((40, 40, 248, 248), (400, 400, 580, 580))  # in the detector's square, largest first
    with_faces = models_dir / "detailer-models"
    (with_faces).mkdir(exist_ok=True)
    family = HIRES_FAMILY
    pipe = BUILDERS[family]()
    save_tiny_pipeline(pipe, with_faces / f"bench-{family}")
    write_face_models(with_faces, sdxl_unet=pipe.unet, photo_shape=(det, det, 3), boxes=faces)
    manager = PipelineManager(manager_config(with_faces))
    manager.face.idformer_config = TINY_IDFORMER
    size = SIZES[family]
    request = GenerationRequest(model=f"bench-{family}", prompt="a portrait photo", steps=steps, width=size, height=size, seed=5,
                                cfg_scale=3.0, sampler=SAMPLERS[family], save=False, face_detail_strength=0.5)
    face = FaceOptions(photos=(str(HANKS),))
    scorer = ArcFaceScorer(with_faces, [str(HANKS)])
    arms = {"without detailer": request, "with detailer": GenerationRequest(**{**request.__dict__, "face_detail": True})}
    figures = {name: {"seconds_per_face": [], "similarity": [], "total": []} for name in arms}
    for name, arm in arms.items():
        manager.generate(arm, face=face)  # warm-up
    for _ in range(rounds):
        for name, arm in arms.items():
            result = manager.generate(arm, face=face)
            count = len(faces) if arm.face_detail else 0
            if count:
                figures[name]["seconds_per_face"].append(result.stage_seconds.get("face detail", 0.0) / count)
            score = scorer.score(result.images[0].image)
            if score is not None:
                figures[name]["similarity"].append(score)
            figures[name]["total"].append(result.total_seconds)
    scorer.release()
    out = {name: {key: (median(values) if values else None) for key, values in arm.items()} for name, arm in figures.items()}
    say(f"face detailer: {out['with detailer']['seconds_per_face']:.3f} s per face")
    return out


def report(results: dict, device, steps: int, hires: dict | None = None, detailer: dict | None = None) -> str:
    lines = [heading(f"img2img and inpainting vs text-to-image on {device} (tiny pipelines, {steps} steps, medians)")]
    rows = []
    for family, r in results.items():
        base = r["txt2img"]["denoise"]
        i2i = r["img2img 0.5"]["denoise"] / max(base, 1e-9)
        rows.append([family, seconds(base, 4), f"{seconds(r['img2img 0.5']['denoise'], 4)} ({ratio(i2i)})",
                     "met" if i2i <= IMG2IMG_TARGET else "missed", seconds(r["img2img 0.5"]["img encode"], 4),
                     f"{seconds(r['inpaint 0.75']['denoise'], 4)} ({ratio(r['inpaint 0.75']['denoise'] / max(base, 1e-9))})",
                     f"{int(r['txt2img']['steps'])} / {int(r['img2img 0.5']['steps'])} / {int(r['inpaint 0.75']['steps'])}"])
    lines.append(table(["family", "denoise txt2img", "img2img 0.5", f"<= {IMG2IMG_TARGET}x", "img encode", "inpaint 0.75",
                        "steps run (t2i / i2i / inpaint)"], rows))
    if hires:
        kind = next(iter(hires.values()))["memory_kind"]
        lines.append("")
        lines.append(f"hires fix 2x on the tiny {HIRES_FAMILY} ({next(iter(hires.values()))['size'][0]} px out), denoising 0.5; peak = {kind}")
        lines.append(table(["upscaler", "first pass", "hires pass", "VAE decode", "total", "peak MiB"],
                           [[name, seconds(r["first pass"], 4), seconds(r["hires pass"], 4), seconds(r["VAE decode"], 4), seconds(r["total"], 4),
                             f"{r['peak_bytes'] / 2**20:.0f}"] for name, r in hires.items()]))
    if detailer:
        def similarity(value):
            return "n/a" if value is None else f"{value:.3f}"

        lines.append("")
        lines.append(f"face detailer on the tiny {HIRES_FAMILY} with PuLID on (tiny face models: mechanism, not quality)")
        lines.append(table(["arm", "seconds per face", "ArcFace cos to reference", "total"],
                           [[name, "-" if r["seconds_per_face"] is None else seconds(r["seconds_per_face"], 4), similarity(r["similarity"]),
                             seconds(r["total"], 4)] for name, r in detailer.items()]))
    return "\n".join(lines)


def run(manager, json_file: Path | None = None, quick: bool = False, out=None) -> int:
    out = out or sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    print_suite_header(out, "bench --suite refine: img2img and inpainting vs text-to-image", manager.device)
    from pipelines.manager import ManagerConfig, PipelineManager

    rounds, steps = (2, 4) if quick else (5, 10)
    folder = Path(tempfile.mkdtemp(prefix="likeness-bench-refine-"))
    try:
        for family, build in BUILDERS.items():
            save_tiny_pipeline(build(), folder / f"bench-{family}")

        def config(models_dir: Path) -> ManagerConfig:
            return ManagerConfig(models_dir=models_dir, outputs_dir=folder / "out", cache_dir=manager.config.cache_dir,
                                 device=str(manager.device), include_hf_cache=False, latent_cache_entries=0)

        bench = PipelineManager(config(folder))
        results = {family: measure_family(bench, family, rounds, steps, say) for family in BUILDERS}
        hires = measure_hires(bench, rounds, steps, say) if f"bench-{HIRES_FAMILY}" in {e.name for e in bench.models()} else None
        detailer = measure_detailer(folder, config, rounds, steps, say) if HIRES_FAMILY in BUILDERS else None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    say(report(results, manager.device, steps, hires, detailer))
    if json_file is not None:
        Path(json_file).write_text(json.dumps({**results, "hires": hires, "detailer": detailer}, indent=2))
    return 0
