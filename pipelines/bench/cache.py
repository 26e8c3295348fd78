"""`bench --suite cache`: what each cache buys, side by side in one run.

(a) Our DeepCache against the reference `DeepCache` package (DeepCacheSDHelper) on the mid-size
    UNet (64/128/256/256, cross-attention 768), DDIM, CFG 7.5, the same seed: speedup over no
    cache and PSNR of the decoded image against the uncached one.
(b) FLUX.1 block caches (diffusers' hooks) on a small seeded FLUX transformer, our own flow-match
    loop: speedup and PSNR of the final latents per cache and threshold.
(c) The approximate cache on a stream of prompts in the demo model's vocabulary, through the manager:
    hit rate for a scene asked again in other words vs a new scene, and the share of denoise steps
    saved; and the faiss HNSW lookup time at 1k / 10k / 100k random 768-d entries (target < 1 ms at 100k).
(d) The prompt memo: text encoding on a miss against a hit.
(e) A1111's Token merging ratio (tomesd) on the mid-size UNet: speedup over no merging and PSNR, as (a).
"""
from __future__ import annotations

import dataclasses
import gc
import random
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from pipelines.bench import models as bench_models
from pipelines.bench.tables import finish_suite, heading, median, ratio, seconds, table, verdict
from pipelines.metrics import psnr

PROMPT = "a lighthouse on a cliff at dusk, dramatic clouds"
SEED = 7
DEEPCACHE_CONFIGS = ((2, 0), (3, 0), (5, 0), (3, 1))
# The reference package's figures on this configuration (20 DDIM steps, 512 px, CPU), from the issue.
REFERENCE_PUBLISHED = {(2, 0): (1.72, 44.5), (3, 0): (2.16, 40.2), (5, 0): (2.91, 37.9), (3, 1): (1.52, 44.1)}
FLUX_CACHES = (("first-block", 0.05), ("first-block", 0.08), ("first-block", 0.12), ("first-block", 0.2),
               ("taylorseer", 0.08), ("magcache", 0.06), ("magcache", 0.12))
LOOKUP_TARGET_SECONDS = 0.001


def say(text: str = "") -> None:
    print(text, flush=True)


def timed(action):
    start = time.perf_counter()
    value = action()
    return value, time.perf_counter() - start


# -- (a) DeepCache --------------------------------------------------------------------------------------


def reference_helper():
    try:
        from DeepCache import DeepCacheSDHelper
    except ImportError:
        return None
    return DeepCacheSDHelper


def mid_size_pipe():
    """The mid-size SD-like pipeline (bench_models) with SD 1.5's DDIM settings, for (a) and (e)."""
    from diffusers import DDIMScheduler

    from pipelines.demo_model import build_tiny_sd15_pipeline

    pipe = build_tiny_sd15_pipeline(seed=bench_models.MID_SEED, unet_channels=bench_models.MID_UNET_CHANNELS,
                                    cross_attention_dim=bench_models.MID_CROSS_ATTENTION, text_layers=bench_models.MID_TEXT_LAYERS,
                                    sd15_block_layout=True)
    # SD 1.5's own DDIM settings. With diffusers' default clip_sample=True the random-weight UNet's x0
    # estimate sits on the clip bounds and any change to a step sends the run elsewhere (13 dB for
    # both caches alike, measured), which says nothing about the caches.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def mid_size_run(pipe, size: int, step_count: int, hooks=()) -> tuple[np.ndarray, float]:
    """One generation of the mid-size pipeline with `hooks` attached: the decoded image (uint8) and its seconds."""
    from pipelines.hooks import HookContext, attached

    context = HookContext(step_count, size, size, 1)

    def advance(_pipe, index, _t, tensors):
        context.step_index = index + 1
        return tensors

    with attached(pipe, list(hooks), context), torch.no_grad():
        start = time.perf_counter()
        image = pipe(PROMPT, num_inference_steps=step_count, guidance_scale=7.5, width=size, height=size, output_type="np",
                     generator=torch.Generator().manual_seed(SEED), callback_on_step_end=advance).images[0]
        return (image * 255).round().astype(np.uint8), time.perf_counter() - start


def deepcache_section(quick: bool) -> dict:
    from pipelines.hooks.deepcache import DeepCacheConfig, DeepCacheHook

    size, steps = (256, 10) if quick else (512, 20)
    pipe = mid_size_pipe()

    def generate(hooks=(), step_count=steps):
        return mid_size_run(pipe, size, step_count, hooks)

    say(f"  [a] mid-size UNet {'/'.join(map(str, bench_models.MID_UNET_CHANNELS))}, {size}x{size}, {steps} DDIM steps (SD 1.5's settings), "
        f"CFG 7.5, seed {SEED}")
    generate(step_count=2)  # warm-up: allocator, kernels
    baseline, base_seconds = generate()
    say(f"      no cache: {base_seconds:.2f} s")
    helper_class = reference_helper()
    rows = []
    for interval, branch in DEEPCACHE_CONFIGS:
        # An uncached run right before each pair: on a shared machine the load drifts within minutes.
        _, base_seconds = generate()
        ours, ours_seconds = generate([DeepCacheHook(DeepCacheConfig(interval, branch))])
        row = {"interval": interval, "branch": branch, "baseline_seconds": base_seconds, "ours_seconds": ours_seconds,
               "ours_speedup": base_seconds / ours_seconds, "ours_psnr": psnr(baseline, ours)}
        if helper_class is not None:
            helper = helper_class(pipe=pipe)
            helper.set_params(cache_interval=interval, cache_branch_id=branch)
            helper.enable()
            try:
                theirs, their_seconds = generate()
            finally:
                helper.disable()
            row.update(reference_seconds=their_seconds, reference_speedup=base_seconds / their_seconds, reference_psnr=psnr(baseline, theirs))
        say(f"      N={interval} B={branch}: no cache {base_seconds:.2f} s, ours {ours_seconds:.2f} s" + (f", reference {row['reference_seconds']:.2f} s" if "reference_seconds" in row else ""))
        rows.append(row)
    again, again_seconds = generate()  # the machine's drift over the section
    del pipe
    gc.collect()
    return {"size": size, "steps": steps, "baseline_seconds": base_seconds, "baseline_again_seconds": again_seconds,
            "baseline_repeatable": bool(np.array_equal(again, baseline)), "rows": rows, "reference_installed": helper_class is not None}


TOKEN_MERGING_RATIOS = (0.3, 0.5)


def token_merging_section(quick: bool) -> dict:
    """A1111's Token merging ratio (tomesd, A1111's settings) on the mid-size UNet: speedup over no merging, each
    against an unmerged run made just before it, and PSNR of the decoded image against the unmerged one."""
    from pipelines.hooks.token_merging import TokenMergingHook

    size, steps = (256, 10) if quick else (512, 20)
    pipe = mid_size_pipe()
    say(f"  [e] mid-size UNet, {size}x{size} ({(size // 8) ** 2} tokens at full resolution), {steps} DDIM steps, CFG 7.5, seed {SEED}")
    mid_size_run(pipe, size, 2)  # warm-up
    baseline, _ = mid_size_run(pipe, size, steps)
    rows = []
    for merged_share in TOKEN_MERGING_RATIOS:
        _, base_seconds = mid_size_run(pipe, size, steps)
        merged, merged_seconds = mid_size_run(pipe, size, steps, [TokenMergingHook(merged_share)])
        rows.append({"ratio": merged_share, "baseline_seconds": base_seconds, "seconds": merged_seconds,
                     "speedup": base_seconds / merged_seconds, "psnr": psnr(baseline, merged)})
        say(f"      ratio {merged_share:g}: unmerged {base_seconds:.2f} s, merged {merged_seconds:.2f} s")
    del pipe
    gc.collect()
    return {"size": size, "steps": steps, "rows": rows}


def token_merging_report(data: dict) -> list[str]:
    lines = [f"  mid-size UNet, {data['size']}x{data['size']}, {data['steps']} DDIM steps; PSNR of the decoded image vs unmerged"]
    lines.append(table(["ratio", "unmerged", "merged", "speedup", "PSNR"],
                   [[f"{row['ratio']:g}", seconds(row["baseline_seconds"]), seconds(row["seconds"]), ratio(row["speedup"]),
                     f"{row['psnr']:.1f} dB"] for row in data["rows"]]))
    return lines


def deepcache_report(data: dict) -> list[str]:
    headers = ["N", "B", "ours speedup", "ours PSNR", "reference speedup", "reference PSNR", "published ref.", "target"]
    rows = []
    for row in data["rows"]:
        published = REFERENCE_PUBLISHED.get((row["interval"], row["branch"]))
        # The target: our speedup >= the reference's at equal or better PSNR.
        target = "-" if "reference_speedup" not in row else verdict(
            row["ours_speedup"] >= row["reference_speedup"] and row["ours_psnr"] >= row["reference_psnr"])
        rows.append([row["interval"], row["branch"], ratio(row["ours_speedup"]), f"{row['ours_psnr']:.1f} dB",
                     ratio(row.get("reference_speedup")), f"{row['reference_psnr']:.1f} dB" if "reference_psnr" in row else "-",
                     f"{published[0]:.2f}x / {published[1]:.1f} dB" if published and data["steps"] == 20 else "-", target])
    lines = [table(headers, rows, "rrrrrrrl")]
    lines.append(f"  uncached {data['baseline_seconds']:.2f} s at the start, {data['baseline_again_seconds']:.2f} s at the end (the machine's drift); "
                 "each row's speedup is against an uncached run made just before it")
    if not data["reference_installed"]:
        lines.append("  reference: install DeepCache to compare (pip install --no-deps DeepCache==0.1.1; it needs only torch, diffusers, transformers)")
    else:
        lines.append("  branch ids count layers in both (B=0: only the last up layer runs on a cached step), so equal PSNR means "
                     "the same cached computation; the speed difference is the reference's per-module wrappers (and run-to-run noise)")
    return lines


# -- (b) FLUX block caches -----------------------------------------------------------------------------


def small_flux_transformer():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(11)
    model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=32,
                                   num_attention_heads=4, joint_attention_dim=128, pooled_projection_dim=128, guidance_embeds=True,
                                   axes_dims_rope=(8, 12, 12))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(0.5)  # keep activations finite across blocks with random weights
    return model.eval()


def flux_section(quick: bool) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from pipelines.hooks import HookContext, attached
    from pipelines.hooks.flux_block_cache import FluxBlockCacheConfig, FluxBlockCacheHook

    side, steps = (16, 12) if quick else (32, 28)  # packed tokens per side: 32 = a 512 px image
    transformer = small_flux_transformer()
    generator = torch.Generator().manual_seed(SEED)
    noise = torch.randn(1, side * side, 64, generator=generator)
    text = torch.randn(1, 32, 128, generator=generator)
    pooled = torch.randn(1, 128, generator=generator)
    image_ids = torch.zeros(side, side, 3)
    image_ids[..., 1] = torch.arange(side)[:, None]
    image_ids[..., 2] = torch.arange(side)[None, :]
    image_ids = image_ids.reshape(-1, 3)
    text_ids = torch.zeros(32, 3)

    def generate(hooks=()):
        scheduler = FlowMatchEulerDiscreteScheduler()
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps).tolist())
        latents = noise.clone()
        context = HookContext(steps, side * 16, side * 16, 1)
        with attached(SimpleNamespace(transformer=transformer), list(hooks), context), torch.no_grad():
            start = time.perf_counter()
            for index, t in enumerate(scheduler.timesteps):
                context.step_index = index
                with transformer.cache_context("cond"):
                    prediction = transformer(hidden_states=latents, timestep=t.expand(1) / 1000, guidance=torch.full((1,), 3.5),
                                             pooled_projections=pooled, encoder_hidden_states=text, txt_ids=text_ids, img_ids=image_ids,
                                             return_dict=False)[0]
                latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
            return latents, time.perf_counter() - start

    say(f"  [b] FLUX transformer (2 double + 4 single blocks, width 128), {side * side} image tokens, {steps} flow-match steps")
    generate()
    baseline, base_seconds = generate()
    peak = float(baseline.max() - baseline.min())
    rows = []
    for kind, threshold in FLUX_CACHES:
        cached, cached_seconds = generate([FluxBlockCacheHook(FluxBlockCacheConfig(kind, threshold))])
        rows.append({"cache": kind, "threshold": threshold if kind != "taylorseer" else None, "seconds": cached_seconds,
                     "speedup": base_seconds / cached_seconds, "psnr": psnr(baseline.numpy(), cached.numpy(), peak=peak)})
    return {"tokens": side * side, "steps": steps, "baseline_seconds": base_seconds, "rows": rows}


def flux_report(data: dict) -> list[str]:
    rows = [[row["cache"], "-" if row["threshold"] is None else f"{row['threshold']:g}", seconds(row["seconds"]), ratio(row["speedup"]),
             "inf" if row["psnr"] == float("inf") else f"{row['psnr']:.1f} dB"] for row in data["rows"]]
    return [table(["cache", "threshold", "time", "speedup", "PSNR (latents)"], rows),
            f"  uncached {seconds(data['baseline_seconds'])}; PSNR of the final latents against the uncached run (peak = its range)",
            "  random weights: the first block's output changes more between steps than a trained FLUX.1's, so fewer steps are skipped"]


# -- (c) the approximate cache --------------------------------------------------------------------------


SUBJECTS = ["a red fox", "an old lighthouse", "a mountain lake", "a city street", "a bowl of fruit", "a sailing boat", "a portrait of a woman",
            "a portrait of an old man", "a cat on a sofa", "a castle on a hill", "a desert road", "a forest path", "a bridge in fog",
            "a field of sunflowers", "a snowy village", "a robot in a workshop", "a dragon over a valley", "a cup of coffee",
            "a vintage car", "a waterfall in a jungle"]
STYLES = ["photo", "oil painting", "watercolor", "pencil sketch", "digital art"]
LIGHTS = ["at dawn", "at golden hour", "at night", "in soft light", "under a stormy sky"]
TWEAKS = ["", ", highly detailed", ", 35mm", ", trending", ", 4k"]


def prompt_stream(count: int, seed: int = 0) -> list[str]:
    """Templated prompts, about half of them small variations of an earlier one (as users iterate)."""
    rng = random.Random(seed)
    prompts: list[str] = []
    while len(prompts) < count:
        if prompts and rng.random() < 0.5:
            base = rng.choice(prompts).split(",")[0]
            prompts.append(base + rng.choice(TWEAKS))
        else:
            prompts.append(f"{rng.choice(STYLES)} of {rng.choice(SUBJECTS)} {rng.choice(LIGHTS)}")
    return prompts


def demo_prompt_stream(count: int, seed: int = 0) -> list[tuple[str, bool]]:
    """Prompts in the demo model's vocabulary, as a user iterates: about half say an earlier scene again
    in other words (`True`: the same picture asked for, a hit is right), the rest ask for a new scene
    (`False`: a hit there reuses an unrelated start, unless the new scene happens to look alike)."""
    from pipelines.demo import scenes

    rng = np.random.default_rng(seed)
    drawn: list = []
    stream: list[tuple[str, bool]] = []
    while len(stream) < count:
        if drawn and rng.random() < 0.5:
            stream.append((scenes.caption(drawn[int(rng.integers(len(drawn)))], rng), True))
        else:
            drawn.append(scenes.random_scene(rng, held_out=None))
            stream.append((scenes.caption(drawn[-1], rng), False))
    return stream


def approximate_section(manager, quick: bool) -> dict:
    from pipelines.catalog import DEMO_MODEL_NAME
    from pipelines.demo.scenes import SIZE
    from pipelines.manager import PipelineManager
    from pipelines.request import GenerationRequest

    count, steps = (100, 10) if quick else (500, 20)
    workdir = Path(tempfile.mkdtemp(prefix="likeness-bench-approx-"))
    try:
        config = dataclasses.replace(manager.config, models_dir=workdir / "models", outputs_dir=workdir / "outputs", cache_dir=workdir / "cache",
                                     include_hf_cache=False, latent_cache_entries=0)
        bench_manager = PipelineManager(config)
        bench_manager.prepare_demo_model()
        stream = demo_prompt_stream(count)
        say(f"  [c] approximate cache: {count} demo-vocabulary prompts (about half an earlier scene in other words), demo model, "
            f"{SIZE}x{SIZE}, {steps} Euler steps")
        ks: list[int] = []
        similarities: list[float] = []
        denoise_hit, denoise_miss = [], []
        hits = {True: 0, False: 0}
        for index, (prompt, rephrased) in enumerate(stream):
            request = GenerationRequest(model=DEMO_MODEL_NAME, prompt=prompt, steps=steps, width=SIZE, height=SIZE, seed=index, sampler="Euler",
                                        save=False, approximate_cache=True)
            result = bench_manager.generate(request, telemetry=False)
            note = result.cache_notes.get("approx cache", "")
            if note.startswith("hit"):
                k, s = note.split()[1:3]
                ks.append(int(k.split("=")[1]))
                similarities.append(float(s.split("=")[1]))
                denoise_hit.append(result.stage_seconds.get("denoise", 0.0))
                hits[rephrased] += 1
            else:
                denoise_miss.append(result.stage_seconds.get("denoise", 0.0))
        stats = bench_manager.approximate_cache().stats()
        histogram = {k: ks.count(k) for k in sorted(set(ks))}
        rephrasings = sum(1 for _, rephrased in stream if rephrased)
        return {"prompts": count, "steps": steps, "size": SIZE, "hits": len(ks), "hit_rate": len(ks) / count, "steps_saved": sum(ks),
                "steps_saved_share": sum(ks) / (count * steps), "k_histogram": histogram,
                "rephrasings": rephrasings, "rephrasing_hit_rate": hits[True] / max(rephrasings, 1),
                "new_scene_hit_rate": hits[False] / max(count - rephrasings, 1),
                "median_similarity_of_hits": median(similarities), "median_denoise_hit": median(denoise_hit),
                "median_denoise_miss": median(denoise_miss), "stored_latents": stats.entries, "stored_bytes": stats.bytes}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def lookup_section(quick: bool) -> dict:
    from pipelines.caches.approximate import PartitionIndex

    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    rng = np.random.default_rng(0)
    rows = []
    for size in sizes:
        vectors = rng.standard_normal((size, 768), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index = PartitionIndex(768)
        _, build_seconds = timed(lambda: index.add_many(list(range(size)), vectors))
        queries = rng.standard_normal((500, 768), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        for query in queries[:20]:  # warm-up
            index.search(query)
        times = []
        for query in queries:
            start = time.perf_counter()
            index.search(query)
            times.append(time.perf_counter() - start)
        times.sort()
        rows.append({"entries": size, "build_seconds": build_seconds, "median_seconds": median(times), "p99_seconds": times[int(len(times) * 0.99)]})
        say(f"      {size:,} entries: built in {build_seconds:.1f} s, lookup median {times[len(times) // 2] * 1e3:.3f} ms")
        del index, vectors
        gc.collect()
    return {"dim": 768, "rows": rows}


def approximate_report(data: dict, lookup: dict) -> list[str]:
    histogram = ", ".join(f"K={k}: {n}" for k, n in data["k_histogram"].items()) or "none"
    lines = [table(["prompts", "hits", "hit rate", "denoise steps saved", "median s of hits"],
                   [[data["prompts"], data["hits"], f"{data['hit_rate']:.0%}", f"{data['steps_saved']} of {data['prompts'] * data['steps']} "
                     f"({data['steps_saved_share']:.1%})", f"{data['median_similarity_of_hits']:.3f}"]]),
             f"  K of {data['steps']} steps: {histogram}",
             f"  median denoise: hit {seconds(data['median_denoise_hit'])}, miss {seconds(data['median_denoise_miss'])}; "
             f"kept {data['stored_latents']} latents ({data['stored_bytes'] / 2**20:.1f} MiB)",
             f"  hit rate: an earlier scene in other words {data['rephrasing_hit_rate']:.0%} ({data['rephrasings']} prompts), "
             f"a new scene {data['new_scene_hit_rate']:.0%} ({data['prompts'] - data['rephrasings']}; a new scene can still look like an earlier one)",
             "", table(["entries (768-d)", "index build", "lookup median", "lookup p99", "target < 1 ms"],
                       [[f"{r['entries']:,}", seconds(r["build_seconds"]), seconds(r["median_seconds"]), seconds(r["p99_seconds"]),
                         "PASS" if r["median_seconds"] < LOOKUP_TARGET_SECONDS else "FAIL"] for r in lookup["rows"]])]
    return lines


# -- (d) the prompt memo ---------------------------------------------------------------------------------


def memo_section(quick: bool) -> dict:
    from pipelines.caches.memo import MemoCache
    from pipelines.demo_model import build_tiny_sd15_pipeline
    from pipelines.families import Family
    from pipelines.generate import LoadedModel, encode_prompts

    pipe = build_tiny_sd15_pipeline(seed=bench_models.MID_SEED, unet_channels=(32, 64, 64, 64), cross_attention_dim=bench_models.MID_CROSS_ATTENTION,
                                    text_layers=bench_models.MID_TEXT_LAYERS, sd15_block_layout=True)
    model = LoadedModel("bench", Family.SD15, pipe, dict(pipe.scheduler.config), torch.float32, torch.device("cpu"))
    memo = MemoCache("prompt embeddings", "lru", 64)
    prompts = prompt_stream(10 if quick else 30, seed=1)
    misses, hits = [], []
    for prompt in prompts:
        key = (prompt, "", 1, True)
        _, miss = timed(lambda: memo.get_or_compute(key, lambda: encode_prompts(model, prompt, "", 1, True)))
        _, hit = timed(lambda: memo.get_or_compute(key, lambda: encode_prompts(model, prompt, "", 1, True)))
        misses.append(miss)
        hits.append(hit)
    return {"encoder": f"CLIP text {bench_models.MID_TEXT_LAYERS} layers x {bench_models.MID_CROSS_ATTENTION}, with CFG (two prompts)",
            "prompts": len(prompts), "median_miss": median(misses), "median_hit": median(hits)}


def memo_report(data: dict) -> list[str]:
    return [table(["text encoder", "miss (encode)", "hit (memo)", "speedup"],
                  [[data["encoder"], seconds(data["median_miss"]), seconds(data["median_hit"]), ratio(data["median_miss"] / data["median_hit"])]]),
            f"  medians over {data['prompts']} prompts; a real SD 1.5 encoder (12 layers) costs more per miss, a hit the same"]


# -- the suite -------------------------------------------------------------------------------------------


def run(manager, json_file: Path | None = None, quick: bool = False) -> int:
    started = time.perf_counter()
    figures: dict = {"mode": "quick" if quick else "full", "device": str(manager.device), "torch_threads": torch.get_num_threads()}
    say(heading(f"Likeness bench --suite cache ({figures['mode']})"))
    say(f"  device {manager.device}, torch threads {torch.get_num_threads()}; every ratio below compares runs made in this one process")
    figures["deepcache"] = deepcache_section(quick)
    figures["flux"] = flux_section(quick)
    figures["approximate"] = approximate_section(manager, quick)
    figures["lookup"] = lookup_section(quick)
    figures["memo"] = memo_section(quick)
    figures["token_merging"] = token_merging_section(quick)

    say(heading("(a) DeepCache: ours vs the reference package (speedup over no cache, PSNR vs uncached)"))
    for line in deepcache_report(figures["deepcache"]):
        say(line)
    say(heading("(b) FLUX block caches"))
    for line in flux_report(figures["flux"]):
        say(line)
    say(heading("(c) Approximate cache"))
    for line in approximate_report(figures["approximate"], figures["lookup"]):
        say(line)
    say(heading("(d) Prompt memo"))
    for line in memo_report(figures["memo"]):
        say(line)
    say(heading("(e) Token merging (tomesd, A1111's settings)"))
    for line in token_merging_report(figures["token_merging"]):
        say(line)
    return finish_suite(figures, started, json_file, say)
