"""`python app.py bench --suite refine`: what the refining modes cost, side by side in one run.

- img2img at strength 0.5 vs text-to-image at the same steps: the denoise stage's time (target: at
  most 0.55x: img2img runs the last half of the schedule) and the init image's VAE encode;
- inpainting (a quarter of the image masked) at strength 0.75 vs text-to-image.

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


def report(results: dict, device, steps: int) -> str:
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
        bench = PipelineManager(ManagerConfig(models_dir=folder, outputs_dir=folder / "out", cache_dir=manager.config.cache_dir,
                                              device=str(manager.device), include_hf_cache=False, latent_cache_entries=0))
        results = {family: measure_family(bench, family, rounds, steps, say) for family in BUILDERS}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    say(report(results, manager.device, steps))
    if json_file is not None:
        Path(json_file).write_text(json.dumps(results, indent=2))
    return 0
