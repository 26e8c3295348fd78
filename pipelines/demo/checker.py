"""`bench --suite demo`: does the demo model draw what the prompt says?

(a) Held-out prompts (shape/colour/position and hair/skin/background combinations never in
    training), one image each, read by `pipelines.demo.classify`: accuracy per attribute and of
    all attributes together; two-object prompts reported on their own line.
(b) Seed diversity: mean pairwise pixel distance over 8 seeds of one prompt, against the same
    figure for 8 training renders of that scene (the generator's own jitter).
(c) Through the app's manager: seconds per image end to end at 128x128, 20 steps; DeepCache N=3
    against uncached (speedup, PSNR); the approximate cache on related vs unrelated prompts, and whether its hits
    still draw what their prompt asks.

Targets are printed as PASS/FAIL; the suite never fails on them (exit code 0 when it ran).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from pipelines.demo import DEFAULT_CFG, classify, scenes

STEPS = 20
SIZE = 128
CFG = DEFAULT_CFG  # the demo's own default in the app (form, examples, CLI): what a newcomer gets
SAMPLER = "Euler a"  # SD 1.5's default in the app
PRIMARY = ("colour", "shape", "position", "background", "face")
# Held-out prompts the checker draws (one image each). 96 read the shipped model's shapes 83.5 % right,
# 288 read 76.8 %, and 150 others 73.3 %: with under 100 prompts one figure moves by 4-5 points (a
# binomial standard error) and a target can pass by luck. 288 costs about a minute more.
HELD_OUT_COUNT = 288


def say(text: str = "") -> None:
    print(text, flush=True)


def load_pipe(folder: Path, threads: int | None = None):
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def use_sampler(pipe, name: str = SAMPLER) -> None:
    """Every sampler is made from the scheduler config the pipe was saved with, as the manager makes them from the
    model's: made from the sampler before, a Karras one would lend the next (UniPC, Euler) its sigmas."""
    from pipelines.families import Family
    from pipelines.samplers import AUTOMATIC, find_sampler, split_sampler_name

    saved = getattr(pipe, "_saved_scheduler_config", None)
    if saved is None:
        saved = dict(pipe.scheduler.config)
        object.__setattr__(pipe, "_saved_scheduler_config", saved)  # a plain attribute, not a pipeline component
    _base, schedule = split_sampler_name(name)  # "DPM++ 2M Karras" brings its schedule type
    pipe.scheduler = find_sampler(Family.SD15, name).make(saved, schedule or AUTOMATIC)


def generate(pipe, prompts: list[str], seeds: list[int], steps: int = STEPS, cfg: float = CFG, batch: int = 8) -> list[np.ndarray]:
    """One uint8 128x128 image per (prompt, seed), in order, batched."""
    import torch

    images: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch):
            chunk, chunk_seeds = prompts[start:start + batch], seeds[start:start + batch]
            generators = [torch.Generator().manual_seed(s) for s in chunk_seeds]
            out = pipe(chunk, num_inference_steps=steps, guidance_scale=cfg, width=SIZE, height=SIZE, generator=generators, output_type="np").images
            images.extend((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
    return images


def accuracy(pipe, held_out: list[scenes.Scene], seed: int = 0, steps: int = STEPS, cfg: float = CFG) -> dict:
    """Per-attribute accuracy of one image per scene (its first caption phrasing), plus 'all'."""
    prompts = [scenes.caption(scene, scenes.FixedStyle(index % scenes.CAPTION_STYLES)) for index, scene in enumerate(held_out)]
    images = generate(pipe, prompts, [seed + i for i in range(len(prompts))], steps, cfg)
    right, total = Counter(), Counter()
    shape_right, shape_total = Counter(), Counter()  # single-object scenes, by size and shape ("small star")
    all_right = 0
    misses = []
    for scene, prompt, image in zip(held_out, prompts, images):
        marks = classify.grade(scene, classify.analyse(image))
        for name, ok in marks.items():
            total[name] += 1
            right[name] += ok
        all_right += all(marks.values())
        if scene.kind == "shape":  # one object; pairs are their own kind
            kind = f"{scene.objects[0].size} {scene.objects[0].shape}"
            shape_total[kind] += 1
            shape_right[kind] += marks["shape"]
        if not all(marks.values()) and len(misses) < 8:
            misses.append({"prompt": prompt, "wrong": [k for k, v in marks.items() if not v]})
    per = {name: right[name] / total[name] for name in total}
    per_shape = {kind: [shape_right[kind], shape_total[kind]] for kind in sorted(shape_total)}
    return {"count": len(held_out), "per_attribute": per, "all": all_right / max(1, len(held_out)), "per_shape": per_shape,
            "misses": misses, "images": images}


def pairwise_distance(images: list[np.ndarray]) -> float:
    """Mean RMS pixel distance (0-255 scale) over all pairs."""
    values = [np.sqrt(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2)) for a, b in itertools.combinations(images, 2)]
    return float(np.mean(values))


def diversity(pipe, probe: list[scenes.Scene], seeds: int = 8, cfg: float = CFG) -> dict:
    model, data = [], []
    for index, scene in enumerate(probe):
        prompt = scenes.caption(scene)
        model.append(pairwise_distance(generate(pipe, [prompt] * seeds, list(range(100, 100 + seeds)), cfg=cfg)))
        rng = np.random.default_rng(1000 + index)
        data.append(pairwise_distance([scenes.render(scene, rng) for _ in range(seeds)]))
    return {"model": float(np.mean(model)), "training": float(np.mean(data)), "ratio": float(np.mean(model) / max(1e-6, np.mean(data))),
            "prompts": [scenes.caption(s) for s in probe]}


def diversity_probe() -> list[scenes.Scene]:
    return [scenes.Scene("shape", "white", (scenes.Shape("circle", "red", "left", "big"),)),
            scenes.Scene("shape", "navy", (scenes.Shape("star", "yellow", "top right", "small"),)),
            scenes.Scene("face", "gray", hair="blonde", skin="tan"),
            scenes.Scene("shape", scenes.GRADIENT, (scenes.Shape("square", "green", "centre", "big"),))]


# -- (c) through the app's manager ----------------------------------------------------------------------


def app_section(manager, quick: bool, folder: Path) -> dict:
    from pipelines.catalog import DEMO_MODEL_NAME
    from pipelines.manager import PipelineManager
    from pipelines.metrics import psnr
    from pipelines.request import GenerationRequest

    from pipelines.demo_model import DEMO_DIR_ENV

    workdir = Path(tempfile.mkdtemp(prefix="likeness-bench-demo-"))
    before = os.environ.get(DEMO_DIR_ENV)
    os.environ[DEMO_DIR_ENV] = str(folder)  # the bench manager's demo entry is the folder under test
    try:
        config = dataclasses.replace(manager.config, models_dir=workdir / "models", outputs_dir=workdir / "outputs", cache_dir=workdir / "cache",
                                     include_hf_cache=False, latent_cache_entries=0)
        bench = PipelineManager(config)

        def run(prompt: str, seed: int, sampler: str = SAMPLER, **extra):
            request = GenerationRequest(model=DEMO_MODEL_NAME, prompt=prompt, steps=STEPS, width=SIZE, height=SIZE, seed=seed, sampler=sampler,
                                        cfg_scale=CFG, save=False, **extra)
            return bench.generate(request, telemetry=False)

        prompt = "a big red circle on the left on a white background"
        run(prompt, 0)  # load and warm up
        repeats = 3 if quick else 6
        plain, cached = [], []
        for index in range(repeats):  # interleaved: the load on a shared machine drifts; Euler, so only the cache differs
            plain.append(run(prompt, index, "Euler"))
            cached.append(run(prompt, index, "Euler", deepcache_interval=3))
        plain_s = float(np.median([r.total_seconds for r in plain]))
        cached_s = float(np.median([r.total_seconds for r in cached]))
        plain_denoise = float(np.median([r.stage_seconds.get("denoise", 0.0) for r in plain]))
        cached_denoise = float(np.median([r.stage_seconds.get("denoise", 0.0) for r in cached]))
        psnrs = [psnr(np.asarray(a.images[0].image), np.asarray(b.images[0].image)) for a, b in zip(plain, cached)]

        hits, hits_right = {}, {}
        for name, stream in approx_streams().items():
            bench.approximate_cache().clear()
            results = [run(prompt, 11, approximate_cache=True) for prompt, _ in stream]
            notes = [result.cache_notes.get("approx cache", "") for result in results]
            # the first prompt of a stream has nothing before it: count the rest
            hits[name] = sum(n.startswith("hit") for n in notes[1:]) / max(1, len(notes) - 1)
            # what a hit costs: is the picture resumed from another prompt's latents still the one asked for?
            graded = [all(classify.grade(scene, classify.analyse(np.asarray(result.images[0].image))).values())
                      for (_, scene), result, note in zip(stream, results, notes) if note.startswith("hit")]
            hits_right[name] = [sum(graded), len(graded)]
        return {"seconds_per_image": plain_s, "deepcache_seconds": cached_s, "deepcache_speedup": plain_s / cached_s,
                "denoise_seconds": plain_denoise, "deepcache_denoise_seconds": cached_denoise,
                "deepcache_denoise_speedup": plain_denoise / max(1e-9, cached_denoise), "deepcache_psnr": float(np.min(psnrs)),
                "approx_related_hit_rate": hits["related"], "approx_unrelated_hit_rate": hits["unrelated"],
                "approx_related_hits_right": hits_right["related"], "approx_unrelated_hits_right": hits_right["unrelated"]}
    finally:
        if before is None:
            os.environ.pop(DEMO_DIR_ENV, None)
        else:
            os.environ[DEMO_DIR_ENV] = before
        shutil.rmtree(workdir, ignore_errors=True)


def approx_streams() -> dict[str, list[tuple[str, scenes.Scene]]]:
    """The approximate cache's two prompt streams (each prompt with the scene it asks for): the same circle in other
    colours, sizes and words, and prompts about other things."""
    def shape(kind: str, colour: str, position: str, size: str, background: str) -> scenes.Scene:
        return scenes.Scene("shape", background, (scenes.Shape(kind, colour, position, size),))

    related = [(f"a {size} {colour} circle on the left on a white background", shape("circle", colour, "left", size, "white"))
               for colour in ("red", "pink", "orange") for size in ("big", "small")]
    related += [(f"a white background with a {size} {colour} circle on the left", shape("circle", colour, "left", size, "white"))
                for colour in ("red", "pink") for size in ("big", "small")]
    unrelated = [
        ("a portrait of a person with black hair and dark skin on a navy background", scenes.Scene("face", "navy", hair="black", skin="dark")),
        ("a small cyan star in the bottom right corner on an olive background", shape("star", "cyan", "bottom right", "small", "olive")),
        ("a purple ring above a green triangle on a gradient background",
         scenes.Scene("pair", scenes.GRADIENT, (scenes.Shape("ring", "purple"), scenes.Shape("triangle", "green")), relation="above")),
        ("a big yellow heart at the top on a black background", shape("heart", "yellow", "top", "big", "black")),
        ("a face with red hair and light skin on a gray background", scenes.Scene("face", "gray", hair="red", skin="light")),
        ("a blue square right of an orange star on a cream background",
         scenes.Scene("pair", "cream", (scenes.Shape("square", "blue"), scenes.Shape("star", "orange")), relation="right of")),
    ]
    return {"related": related, "unrelated": unrelated}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def run(manager, json_file: Path | None = None, quick: bool = False, folder: Path | None = None) -> int:
    from pipelines.demo import WEIGHTS_DIR
    from pipelines.demo_model import DEMO_DIR_ENV, demo_model_dir

    # The folder the app's demo entry uses ($LIKENESS_DEMO_DIR or the shipped weights): section (c) runs through the app.
    folder = Path(folder or (demo_model_dir(manager.config.cache_dir) if os.environ.get(DEMO_DIR_ENV) else WEIGHTS_DIR))
    if not (folder / "training.json").is_file():
        say(f"demo checker: {folder} is not a trained demo (no training.json). Train one with `python app.py train-demo --out DIR`, "
            f"then run LIKENESS_DEMO_DIR=DIR python app.py bench --suite demo.")
        return 0
    say(f"demo checker: {folder}, {SIZE}x{SIZE}, {STEPS} steps, {SAMPLER}, CFG {CFG}")
    pipe = load_pipe(folder)
    use_sampler(pipe)
    count = 24 if quick else HELD_OUT_COUNT
    start = time.perf_counter()
    figures = accuracy(pipe, scenes.held_out_scenes(count))
    figures.pop("images")
    pairs = [scenes.random_scene(np.random.default_rng(500 + i), held_out=None) for i in range(200)]
    pairs = [s for s in pairs if s.kind == "pair"][: (8 if quick else 24)]
    pair_figures = accuracy(pipe, pairs, seed=50)
    pair_figures.pop("images")
    say(f"(a) held-out prompts: {figures['count']} ({time.perf_counter() - start:.0f} s)")
    for name, value in figures["per_attribute"].items():
        target = f"  {verdict(value >= 0.9)} (>= 90 %)" if name in PRIMARY else ""
        say(f"      {name:<10} {value:6.1%}{target}")
    say(f"      {'all':<10} {figures['all']:6.1%}  {verdict(figures['all'] >= 0.8)} (>= 80 %)")
    say(f"    two objects: both right {pair_figures['per_attribute'].get('objects', 0):.0%}, relation right "
        f"{pair_figures['per_attribute'].get('relation', 0):.0%}, all {pair_figures['all']:.0%} ({pair_figures['count']} prompts)")
    say("    shape right, single objects: " + ", ".join(f"{kind} {right}/{total}" for kind, (right, total) in figures["per_shape"].items()))
    for miss in figures["misses"][:5]:
        say(f"      missed: {miss['prompt']!r} ({', '.join(miss['wrong'])})")
    spread = diversity(pipe, diversity_probe()[:2] if quick else diversity_probe())
    say(f"(b) seed diversity (mean pairwise RMS distance, 8 seeds): model {spread['model']:.1f}, training images {spread['training']:.1f}, "
        f"ratio {spread['ratio']:.2f}  {verdict(spread['ratio'] >= 0.5)} (>= 0.5)")
    del pipe
    app = app_section(manager, quick, folder)
    say(f"(c) through the app: {app['seconds_per_image']:.2f} s per image end to end  {verdict(app['seconds_per_image'] <= 1.0)} (<= 1.0 s)")
    say(f"    DeepCache N=3: {app['deepcache_seconds']:.2f} s, {app['deepcache_speedup']:.2f}x end to end, denoise {app['deepcache_denoise_speedup']:.2f}x, "
        f"PSNR {app['deepcache_psnr']:.1f} dB  {verdict(app['deepcache_speedup'] >= 1.8 and app['deepcache_psnr'] >= 30)} (>= 1.8x at >= 30 dB)")
    say(f"    approximate cache: related prompts hit {app['approx_related_hit_rate']:.0%}, unrelated {app['approx_unrelated_hit_rate']:.0%}  "
        f"{verdict(app['approx_related_hit_rate'] > 0.5 and app['approx_unrelated_hit_rate'] < 0.5)}")
    say("    their hits drawn right (every attribute): related {}/{}, unrelated {}/{}".format(
        *app["approx_related_hits_right"], *app["approx_unrelated_hits_right"]))
    if json_file is not None:
        Path(json_file).write_text(json.dumps({"held_out": figures, "pairs": pair_figures, "diversity": spread, "app": app}, indent=2))
    return 0
