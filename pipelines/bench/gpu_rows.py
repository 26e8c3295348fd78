"""The rows of `bench --suite gpu`: one function per row, each returning its measured lines.

The runner (`pipelines.bench.gpu`) orders them by value and skips what the budget cannot hold; the
models and files they share are built by the setups in `pipelines.bench.gpu_setup`.
"""
from __future__ import annotations

import dataclasses
import gc
import shutil

import torch

from pipelines import devices
from pipelines.bench.gpu import Measure, Row
from pipelines.bench.gpu_setup import FLUX, SDXL, SEED, SWAP, GpuContext, db, image_of, median, median_peak, timed
from pipelines.families import Family
from pipelines.metrics import psnr
from pipelines.request import GenerationRequest

OVERHEAD_TARGET = 1.02  # ours / bare, end to end
DECODE_TARGET = 1.05  # FLUX VAE decode with PuLID on / off
BF16_MEMORY_TARGET = 0.55  # SDXL VAE decode peak, bf16 / fp32
SWAP_TARGET = 0.25  # back from the RAM cache / from disk (the core suite's target)
LORA_FUSED_TARGET = 1.02  # SDXL step with one fused LoRA / base step (issue 15)


# -- rows -------------------------------------------------------------------------------------------


def ours_vs_bare(ctx: GpuContext, request: GenerationRequest) -> list[Measure]:
    """Likeness end to end (`manager.generate`) against diffusers' `__call__` on the same modules, interleaved."""
    from pipelines.samplers import find_sampler

    model = ctx.pipe(request.model)
    pipe, family = model.pipe, model.family
    sampler = find_sampler(family, request.sampler)

    def bare():
        pipe.scheduler = sampler.make(model.base_scheduler_config, request.schedule_type)
        extra = {"negative_prompt": request.negative_prompt} if family is Family.SDXL else {}
        with torch.no_grad():
            return pipe(prompt=request.prompt, num_inference_steps=request.steps, guidance_scale=request.cfg_scale, height=request.height,
                        width=request.width, generator=torch.Generator("cpu").manual_seed(request.seed), output_type="pil", **extra).images[0]

    arms = {"ours": [], "bare": []}
    ctx.generate(request)  # warm-ups: kernels, allocator, cuDNN autotuning
    timed(ctx.device, bare)
    ctx.warm.add(request.model)
    for pair in range(ctx.profile.pairs):
        for arm in (("bare", "ours") if pair % 2 == 0 else ("ours", "bare")):
            arms[arm].append(ctx.generate(request) if arm == "ours" else timed(ctx.device, bare))
        ctx.say(f"{request.model}: pair {pair + 1}/{ctx.profile.pairs}: bare {arms['bare'][-1][1]:.2f} s, ours {arms['ours'][-1][1]:.2f} s")
    result = arms["ours"][0][0]
    attention = sorted({type(p).__name__ for p in (pipe.unet if family is Family.SDXL else pipe.transformer).attn_processors.values()})
    note = (f"{request.width}px {request.steps} steps {request.sampler}; PSNR ours vs bare {db(psnr(arms['bare'][0][0], image_of(result)))} dB; "
            f"denoiser {result.denoiser_dtype}, our decode {result.vae_dtype}; attention {'/'.join(attention)}")
    return [Measure("end to end", "bare", median([a[1] for a in arms["bare"]]), "ours", median([a[1] for a in arms["ours"]]),
                    target=OVERHEAD_TARGET, peak_base=median_peak([a[2] for a in arms["bare"]]),
                    peak_value=median_peak([a[2] for a in arms["ours"]]), note=note)]


def row_sdxl_overhead(ctx: GpuContext) -> list[Measure]:
    return ours_vs_bare(ctx, ctx.sdxl_request())


def row_flux_overhead(ctx: GpuContext) -> list[Measure]:
    return ours_vs_bare(ctx, ctx.flux_request())


def cached_vs_uncached(ctx: GpuContext, base: GenerationRequest, variants: list[tuple[str, GenerationRequest]]) -> list[Measure]:
    """Uncached runs before and after the cached ones (the machine drifts); speedup and PSNR vs uncached."""
    ctx.warm_up(base)
    first, first_s, first_peak = ctx.generate(base)
    measures = []
    results = []
    for label, request in variants:
        ctx.generate(request)  # warm-up of the hook's own first-call costs
        results.append((label, ctx.generate(request)))
    _, last_s, _ = ctx.generate(base)
    base_s = median([first_s, last_s])
    for label, (result, variant_s, peak) in results:
        measures.append(Measure(label, "no cache", base_s, "cached", variant_s, peak_base=first_peak, peak_value=peak,
                                note=f"speedup {base_s / variant_s:.2f}x; PSNR vs uncached {db(psnr(image_of(first), image_of(result)))} dB"))
    return measures


def row_sdxl_deepcache(ctx: GpuContext) -> list[Measure]:
    return cached_vs_uncached(ctx, ctx.sdxl_request(), [("DeepCache N=3 B=0", ctx.sdxl_request(deepcache_interval=3))])


def row_flux_block_cache(ctx: GpuContext) -> list[Measure]:
    variants = [(f"first-block cache {t:g}", ctx.flux_request(flux_cache="first-block", flux_cache_threshold=t)) for t in (0.08, 0.12)]
    return cached_vs_uncached(ctx, ctx.flux_request(), variants)


def row_flux_pulid(ctx: GpuContext) -> list[Measure]:
    """PuLID on vs off, interleaved: step time, VAE decode (the face models must be off the GPU), peak memory."""
    from pipelines.bench.tiny_face import HANKS
    from pipelines.face.options import FaceOptions

    request = ctx.flux_request()
    face = FaceOptions(photos=(str(HANKS),), id_weight=1.0)
    ctx.warm_up(request)
    ctx.generate(request, face=face)  # warm-up: loads the PuLID weights, runs the face stage once
    arms = {"off": [], "on": []}
    for pair in range(ctx.profile.pairs):
        for arm in (("off", "on") if pair % 2 == 0 else ("on", "off")):
            arms[arm].append(ctx.generate(request, face=face if arm == "on" else None)[0])
    off, on = arms["off"], arms["on"]

    def stat(results, pick):
        return median([pick(r) for r in results])

    def decode(r):
        return r.stage_seconds["VAE decode"]

    def step(r):
        return median(r.step_seconds)

    def peak(r):
        return r.peak_memory_bytes

    kind = on[0].memory_kind
    return [
        Measure("VAE decode, PuLID on/off", "off", stat(off, decode), "on", stat(on, decode), target=DECODE_TARGET,
                note=f"decode dtype off {off[0].vae_dtype}, on {on[0].vae_dtype}"),
        Measure("denoise step, PuLID on/off", "off", stat(off, step), "on", stat(on, step), note="20 ID cross-attention blocks"),
        Measure("peak memory, PuLID on/off", "off", stat(off, peak), "on", stat(on, peak), unit="bytes", note=kind),
    ]


def row_face_stage(ctx: GpuContext) -> list[Measure]:
    """insightface + EVA-CLIP + IDFormer for one photo, cold against memoized (the same photo again)."""
    from pipelines.bench.tiny_face import HANKS
    from pipelines.face.options import FaceOptions

    face = ctx.manager.face
    weights = face.weights(Family.FLUX, transformer=ctx.pipe(FLUX).pipe.transformer)
    options = FaceOptions(photos=(str(HANKS),))
    face.memo.clear()
    face.identity(options, Family.FLUX, weights)  # warm-up: onnxruntime sessions, kernels
    cold, memo = [], []
    for _ in range(max(2, ctx.profile.pairs)):
        face.memo.clear()
        cold.append(timed(ctx.device, lambda: face.identity(options, Family.FLUX, weights)))
        memo.append(timed(ctx.device, lambda: face.identity(options, Family.FLUX, weights)))
    assert memo[0][0].from_memo and not cold[0][0].from_memo
    return [Measure("face stage memoized/cold", "cold", median([c[1] for c in cold]), "memo", median([m[1] for m in memo]),
                    peak_base=median_peak([c[2] for c in cold]), peak_value=median_peak([m[2] for m in memo]),
                    note=f"onnxruntime provider {face.last_provider or 'cpu'}; detector/recognizer are tiny stand-ins")]


def row_vae(ctx: GpuContext) -> list[Measure]:
    """SDXL's VAE decoding one latent: fp32 vs bf16 vs fp16 (fp32 fallback on NaN), tiled vs untiled."""
    from pipelines.bench.vae import build_vae, to_uint8
    from pipelines.vae import decode

    if ctx.dry:
        from pipelines.bench.tiny_models import tiny_vae

        vae = tiny_vae(SEED)
    else:
        vae = build_vae("sdxl", ctx.device)
    size = ctx.profile.vae_size
    latents = torch.randn(1, vae.config.latent_channels, size // 8, size // 8, generator=torch.Generator().manual_seed(SEED))
    runs = {}
    for name, dtype, tiled in (("fp32", torch.float32, False), ("bf16", torch.bfloat16, False), ("fp16", torch.float16, False),
                               ("bf16 tiled", torch.bfloat16, True), ("bf16 channels-last", torch.bfloat16, False)):
        vae.to(memory_format=torch.channels_last if "channels-last" in name else torch.contiguous_format)
        decode(vae, latents, dtype, ctx.device, tiled=tiled)  # warm-up: kernels and cuDNN autotuning per dtype
        gc.collect()
        devices.free_device_memory(ctx.device)
        outcome, elapsed, peak = timed(ctx.device, lambda: decode(vae, latents, dtype, ctx.device, tiled=tiled))
        runs[name] = (to_uint8(outcome.images.cpu()), elapsed, peak, outcome.label())
    del vae
    gc.collect()
    devices.free_device_memory(ctx.device)

    def line(label, base, variant, **extra):
        b, v = runs[base], runs[variant]
        return Measure(label, base, b[1], variant, v[1], peak_base=b[2], peak_value=v[2],
                       note=f"{size}px; PSNR vs {base} {db(psnr(b[0], v[0]))} dB; ran as {v[3]}", **extra)

    measures = [line("decode bf16/fp32", "fp32", "bf16"), line("decode fp16+upcast/fp32", "fp32", "fp16"),
                line("decode tiled/untiled (bf16)", "bf16", "bf16 tiled"), line("decode channels-last/default (bf16)", "bf16", "bf16 channels-last")]
    measures.insert(1, Measure("decode peak bf16/fp32", "fp32", runs["fp32"][2], "bf16", runs["bf16"][2], unit="bytes",
                               target=BF16_MEMORY_TARGET, note="GPU allocator peak" if ctx.device.type == "cuda" else "no allocator peak on CPU"))
    return measures


def move_components(pipe, device, non_blocking: bool = False) -> None:
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.to(device, non_blocking=non_blocking)


def pin_components(pipe) -> None:
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in list(component.parameters()) + list(component.buffers()):
                tensor.data = tensor.data.pin_memory()


def row_swap(ctx: GpuContext) -> list[Measure]:
    """SDXL back from the RAM cache (pageable and pinned host memory) against a cold load from local disk."""
    from pipelines.bench.system import drop_page_cache
    from pipelines.manager import PipelineManager

    swap_dir = ctx.workdir / "swap"
    folder = swap_dir / SWAP
    pipe = ctx.pipe(SDXL).pipe
    load_dtype = devices.denoiser_dtype(ctx.device, "sdxl")  # what a real SDXL file holds and the manager loads
    built_dtype = pipe.unet.dtype
    pipe.to(dtype=load_dtype)
    try:
        _, save_s, _ = timed(ctx.device, lambda: pipe.save_pretrained(folder, safe_serialization=True))
    finally:
        pipe.to(dtype=built_dtype)
    swap = PipelineManager(dataclasses.replace(ctx.config, models_dir=swap_dir, cache_dir=ctx.workdir / "cache-swap"))
    try:
        dropped = drop_page_cache(folder)
        disk = swap.load(SWAP)
        with swap.use(SWAP) as model:
            loaded = model.pipe
        move_components(loaded, "cpu")
        _, pageable_s, _ = timed(ctx.device, lambda: loaded.to(ctx.device))  # what the model cache does today
        measures = [Measure("from RAM/from disk", "disk", disk.seconds, "RAM", pageable_s, target=SWAP_TARGET,
                            note=f"{disk.size_bytes / 2**30:.2f} GiB {load_dtype}; page cache {'dropped' if dropped else 'kept'}; "
                                 f"saving took {save_s:.1f} s")]
        if ctx.device.type == "cuda":
            move_components(loaded, "cpu")
            pin_components(loaded)
            _, pinned_s, _ = timed(ctx.device, lambda: move_components(loaded, ctx.device, non_blocking=True))
            measures.append(Measure("RAM->GPU pinned/pageable", "pageable", pageable_s, "pinned", pinned_s, note="non_blocking copies"))
        else:
            measures.append(Measure("RAM->GPU pinned/pageable", "pageable", pageable_s, "pinned", None, note="needs CUDA (no pinned memory on a CPU run)"))
        del loaded
    finally:
        swap.cache.clear()
        shutil.rmtree(folder, ignore_errors=True)
    return measures


def row_sdxl_channels_last(ctx: GpuContext) -> list[Measure]:
    """The UNet in channels-last memory format against the default, end to end (channels-last pays only where
    the convolution kernels prefer it)."""
    request = ctx.sdxl_request()
    unet = ctx.pipe(SDXL).pipe.unet
    ctx.warm_up(request)
    default = [ctx.generate(request)]
    unet.to(memory_format=torch.channels_last)
    try:
        ctx.generate(request)  # warm-up: cuDNN picks kernels for the new layout
        channels_last = [ctx.generate(request)]
    finally:
        unet.to(memory_format=torch.contiguous_format)
    default.append(ctx.generate(request))
    return [Measure("UNet channels-last", "default", median([d[1] for d in default]), "channels-last", channels_last[0][1],
                    peak_base=default[0][2], peak_value=channels_last[0][2],
                    note=f"PSNR vs default {db(psnr(image_of(default[0][0]), image_of(channels_last[0][0])))} dB")]


def row_sdxl_compile(ctx: GpuContext) -> list[Measure]:
    """`torch.compile` on the UNet as the `torch_compile` setting applies it (`pipelines.fast_paths`: dynamic=None):
    eager vs compiled end to end; the first call's compile time apart."""
    request = ctx.sdxl_request()
    unet = ctx.pipe(SDXL).pipe.unet
    ctx.warm_up(request)
    eager = [ctx.generate(request) for _ in range(2)]
    options = {"backend": ctx.profile.compile_backend, "dynamic": None}
    if ctx.profile.compile_mode:
        options["mode"] = ctx.profile.compile_mode
    unet.compile(**options)
    try:
        _, first_s, _ = ctx.generate(request)
        compiled = [ctx.generate(request) for _ in range(2)]
    finally:
        unet._compiled_call_impl = None  # back to eager for any later row (nn.Module.compile has no public undo)
        torch._dynamo.reset()
    eager_s, compiled_s = median([e[1] for e in eager]), median([c[1] for c in compiled])
    mode = f"{options['backend']}{'/' + options['mode'] if 'mode' in options else ''}"
    return [Measure("torch.compile UNet", "eager", eager_s, "compiled", compiled_s, peak_base=eager[0][2], peak_value=compiled[0][2],
                    note=f"{mode}, dynamic=None; first call {first_s:.1f} s (compile {first_s - compiled_s:.1f} s); "
                         f"PSNR vs eager {db(psnr(image_of(eager[0][0]), image_of(compiled[0][0])))} dB")]


def row_sdxl_lora(ctx: GpuContext) -> list[Measure]:
    """One rank-16 LoRA on every attention projection of the full-size SDXL UNet and text encoders: step time
    unfused (PEFT layers) and fused (the fuse policy forced on) against the base model, interleaved."""
    from safetensors.torch import save_file

    from pipelines.bench.lora import random_lora
    from pipelines.lora.fuse import FusePolicy

    manager = ctx.manager
    folder = ctx.models_dir / "Lora"
    folder.mkdir(exist_ok=True)
    save_file(random_lora(ctx.pipe(SDXL).pipe, "sdxl", seed=1), str(folder / "bench-sdxl-lora.safetensors"))
    manager.refresh_loras()
    base = ctx.sdxl_request()
    with_lora = dataclasses.replace(base, prompt=base.prompt + " <lora:bench-sdxl-lora:0.8>")
    ctx.warm_up(base)
    arms = {"base": [], "unfused": [], "fused": []}
    try:
        for mode, request in (("off", with_lora), ("always", with_lora)):
            manager.lora_fuse = FusePolicy(mode)
            ctx.generate(request)  # warm-up: PEFT layers' first calls, the fuse's copies
        for pair in range(ctx.profile.pairs):
            for arm, mode, request in (("base", "off", base), ("unfused", "off", with_lora), ("fused", "always", with_lora)):
                manager.lora_fuse = FusePolicy(mode)
                result, _seconds, peak = ctx.generate(request)
                arms[arm].append((median(result.step_seconds), peak, result))
            ctx.say(f"LoRA pair {pair + 1}/{ctx.profile.pairs}: step base {arms['base'][-1][0]:.3f} s, "
                    f"unfused {arms['unfused'][-1][0]:.3f} s, fused {arms['fused'][-1][0]:.3f} s")
    finally:
        manager.lora_fuse = FusePolicy("auto")
    step = {arm: median([a[0] for a in runs]) for arm, runs in arms.items()}
    peak = {arm: median_peak([a[1] for a in runs]) for arm, runs in arms.items()}
    fuse_note = arms["fused"][0][2].stage_seconds.get("LoRA load", 0.0)
    psnr_note = db(psnr(image_of(arms["unfused"][0][2]), image_of(arms["fused"][0][2])))
    return [Measure("1 LoRA unfused, step", "base", step["base"], "unfused", step["unfused"], peak_base=peak["base"], peak_value=peak["unfused"],
                    note="PEFT LoRA layers: two rank-16 matmuls per attention projection"),
            Measure("1 LoRA fused, step", "base", step["base"], "fused", step["fused"], target=LORA_FUSED_TARGET,
                    peak_base=peak["base"], peak_value=peak["fused"],
                    note=f"LoRA load + fuse {fuse_note:.2f} s per generation; PSNR fused vs unfused {psnr_note} dB")]


# Ordered by value when run: what the targets need first, the expensive compile row last.
ROWS = [
    Row("sdxl-overhead", "SDXL 1024px 25 steps CFG DPM++ 2M: ours vs bare diffusers", 100, 45, 8, row_sdxl_overhead, ("sdxl",)),
    Row("flux-overhead", "FLUX.1-dev 1024px 28 steps: ours vs bare diffusers", 95, 60, 8, row_flux_overhead, ("flux",)),
    Row("vae-decode", "SDXL VAE decode 1024px: fp32 / bf16 / fp16+upcast, tiled, channels-last", 90, 25, 8, row_vae),
    Row("flux-pulid", "FLUX.1-dev with PuLID on vs off", 85, 70, 10, row_flux_pulid, ("flux", "face-files")),
    Row("sdxl-deepcache", "SDXL DeepCache N=3 vs uncached", 80, 20, 6, row_sdxl_deepcache, ("sdxl",)),
    Row("flux-fbc", "FLUX.1-dev first-block cache 0.08 / 0.12 vs uncached", 75, 35, 8, row_flux_block_cache, ("flux",)),
    Row("model-swap", "SDXL back from the RAM cache vs from disk; pinned memory", 70, 60, 10, row_swap, ("sdxl",)),
    Row("face-stage", "Face stage (insightface + EVA-CLIP + IDFormer) cold vs memoized", 65, 15, 6, row_face_stage, ("flux", "face-files")),
    Row("sdxl-channels", "SDXL UNet channels-last vs default layout", 62, 15, 4, row_sdxl_channels_last, ("sdxl",)),
    Row("sdxl-lora", "SDXL step with one LoRA, unfused and fused, vs base", 61, 30, 8, row_sdxl_lora, ("sdxl",)),
    Row("sdxl-compile", "SDXL torch.compile of the UNet vs eager", 60, 150, 30, row_sdxl_compile, ("sdxl",)),
]
