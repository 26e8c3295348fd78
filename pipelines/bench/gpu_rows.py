"""The rows of `bench --suite gpu` and the models they share (the budgeted runner is `pipelines.bench.gpu`).

Models are the real architectures with seeded random weights (the same compute as trained ones),
built directly on the device in bf16 and registered with a `PipelineManager` of the suite's own
(`PipelineManager.adopt`), so "ours" is the app's real `manager.generate` path and "bare" is
diffusers' pipeline `__call__` on the very same modules:
- SDXL: UNet, VAE and both CLIP text encoders from the bundled configs (`pipelines.model_configs`).
  Likeness runs SDXL in fp16 on a GPU; random weights are built in bf16 (same speed on Hopper) because
  random fp16 activations can overflow where trained ones do not.
- FLUX.1-dev: the transformer (19 double + 38 single blocks, guidance embedding), its 16-channel VAE,
  CLIP-L and T5-XXL (4.7 B parameters, about 9.5 GB in bf16). T5's tokenizer cannot be built offline:
  the tiny stand-in of `pipelines.bench.tiny_models` feeds real token ids, padded to the same 512
  tokens, so the encoder does the real work.
- Face files: the detector and recognizer are the tiny ONNX stand-ins (the real antelopev2 pack cannot
  be fetched), EVA02-CLIP-L and the IDFormer are full size, PuLID-FLUX has its 20 cross-attention blocks.
With `--dry-run` every model is its tiny version on the CPU.
"""
from __future__ import annotations

import dataclasses
import gc
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines import devices
from pipelines.bench.gpu import Measure, Row, Setup
from pipelines.families import Family
from pipelines.metrics import psnr
from pipelines.request import GenerationRequest

SEED = 1234
PROMPT = "a lighthouse on a cliff at dusk, oil painting, dramatic light"
NEGATIVE = "blurry, low quality"
SDXL = "gpu-sdxl"
FLUX = "gpu-flux"
SWAP = "gpu-sdxl-disk"
OVERHEAD_TARGET = 1.02  # ours / bare, end to end
DECODE_TARGET = 1.05  # FLUX VAE decode with PuLID on / off
BF16_MEMORY_TARGET = 0.55  # SDXL VAE decode peak, bf16 / fp32
SWAP_TARGET = 0.25  # back from the RAM cache / from disk (the core suite's target)

# FLUX.1-dev's published configs (diffusers' FluxTransformer2DModel defaults plus the guidance embedding).
FLUX_DEV_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                            axes_dims_rope=(16, 56, 56))
FLUX_DEV_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                    block_out_channels=(128, 256, 512, 512), layers_per_block=2, act_fn="silu", latent_channels=16, norm_num_groups=32,
                    sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
                    force_upcast=True)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, relative_attention_num_buckets=32,
              relative_attention_max_distance=128, dropout_rate=0.0, layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
              is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1, tie_word_embeddings=False)
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                      base_image_seq_len=256, max_image_seq_len=4096)


@dataclass(frozen=True)
class Profile:
    sdxl_size: int
    sdxl_steps: int
    flux_size: int
    flux_steps: int
    pairs: int  # interleaved A/B pairs per comparison, after one warm-up of each arm
    vae_size: int
    compile_backend: str
    compile_mode: str | None


FULL = Profile(1024, 25, 1024, 28, 3, 1024, "inductor", "default")
# The dry run checks code paths, not speed: the smallest sizes, one pair, and aot_eager (dynamo and AOT
# autograd tracing without inductor's C++ code generation, which takes minutes on 2 CPU cores).
DRY = Profile(256, 2, 256, 2, 1, 256, "aot_eager", None)


class GpuContext:
    """What the rows share: the device, the profile, a manager of the suite's own and a scratch folder."""

    def __init__(self, app_manager, device: torch.device, dry_run: bool, out):
        from pipelines.manager import ManagerConfig, PipelineManager

        self.device = device
        self.dry = dry_run
        self.out = out
        self.profile = DRY if dry_run else FULL
        self.workdir = Path(tempfile.mkdtemp(prefix="likeness-bench-gpu-"))
        self.models_dir = self.workdir / "models"
        self.models_dir.mkdir()
        self.config = ManagerConfig(
            models_dir=self.models_dir, outputs_dir=self.workdir / "outputs", cache_dir=self.workdir / "cache", device=str(device),
            ram_cache_bytes=1 << 40, include_hf_cache=False, latent_cache_entries=0, vae_sticky_fallback=False,
            preview_every=app_manager.config.preview_every,
        )
        self.manager = PipelineManager(self.config)
        self.notes: list[str] = []
        self.warm: set[str] = set()  # models that have had a warm-up generation
        self.started = time.perf_counter()

    def say(self, text: str) -> None:
        print(f"    [{time.perf_counter() - self.started:6.1f} s] {text}", file=self.out, flush=True)

    def request(self, model: str, family: Family, size: int, steps: int, sampler: str, **changes) -> GenerationRequest:
        return GenerationRequest(model=model, prompt=PROMPT, negative_prompt=NEGATIVE if family is Family.SDXL else "", steps=steps,
                                 cfg_scale=family.spec.default_cfg, seed=SEED, width=size, height=size, sampler=sampler, save=False, **changes)

    def sdxl_request(self, **changes) -> GenerationRequest:
        return self.request(SDXL, Family.SDXL, self.profile.sdxl_size, self.profile.sdxl_steps, "DPM++ 2M", **changes)

    def flux_request(self, **changes) -> GenerationRequest:
        return self.request(FLUX, Family.FLUX, self.profile.flux_size, self.profile.flux_steps, "Flow Euler", **changes)

    def pipe(self, name: str):
        with self.manager.use(name) as model:
            return model

    def generate(self, request: GenerationRequest, **options):
        """One `manager.generate`, memo caches cleared first so every run does all of its work."""
        self.manager.clear_caches()
        return timed(self.device, lambda: self.manager.generate(request, **options))

    def warm_up(self, request: GenerationRequest) -> None:
        if request.model not in self.warm:
            self.generate(request)
            self.warm.add(request.model)

    def close(self) -> None:
        self.manager.cache.clear()
        gc.collect()
        devices.free_device_memory(self.device)
        shutil.rmtree(self.workdir, ignore_errors=True)


def timed(device: torch.device, action):
    """(value, seconds, allocator peak or None): synchronized around the timer, peak reset before."""
    devices.synchronize(device)
    devices.reset_peak_memory(device)
    start = time.perf_counter()
    value = action()
    devices.synchronize(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return value, elapsed, peak


def median(values: list[float]) -> float:
    return statistics.median(values)


def median_peak(values: list) -> int | None:
    known = [v for v in values if v is not None]
    return int(statistics.median(known)) if known else None


def image_of(result) -> object:
    return result.images[0].image


def db(value: float) -> str:
    return "inf" if value == float("inf") else f"{value:.1f}"


# -- setups: the models -----------------------------------------------------------------------------


def parameter_note(pipe) -> str:
    from pipelines.bench.models import parameter_counts

    return ", ".join(f"{name} {count / 1e6:,.0f} M" for name, count in parameter_counts(pipe).items())


def build_sdxl(ctx: GpuContext) -> None:
    if ctx.dry:
        from pipelines.bench.tiny_models import build_tiny_sdxl

        pipe, dtype = build_tiny_sdxl(), torch.float32
    else:
        from pipelines.bench.models import full_pipeline

        pipe, dtype = full_pipeline("sdxl", ctx.device, torch.bfloat16, seed=SEED), torch.bfloat16
    ctx.manager.adopt(SDXL, Family.SDXL, pipe, dtype)
    ctx.manager.load(SDXL)
    ctx.say(f"SDXL built on {ctx.device} ({'tiny' if ctx.dry else 'full size'}, {dtype}): {parameter_note(pipe)}")


def full_flux(device: torch.device, dtype: torch.dtype, seed: int = SEED):
    """FLUX.1-dev with seeded random weights, built on `device` in `dtype`."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from pipelines.bench.models import cast, default_dtype
    from pipelines.bench.tiny_models import build_t5_tokenizer
    from pipelines.model_configs import config_dir
    from pipelines.tokenizers import build_clip_tokenizer

    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        transformer = FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER)
        vae = AutoencoderKL(**FLUX_DEV_VAE)
        clip = CLIPTextModel(CLIPTextConfig.from_json_file(config_dir("sd15") / "text_encoder" / "config.json"))  # CLIP ViT-L/14
        t5 = T5EncoderModel(T5Config(**T5_XXL))
    for module in (transformer, vae, clip, t5):
        cast(module, dtype)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=vae, text_encoder=clip,
                        tokenizer=build_clip_tokenizer(), text_encoder_2=t5, tokenizer_2=build_t5_tokenizer(), transformer=transformer)


def build_flux(ctx: GpuContext) -> None:
    if ctx.dry:
        from pipelines.bench.tiny_models import build_tiny_flux

        pipe, dtype = build_tiny_flux(), torch.float32
    else:
        pipe, dtype = full_flux(ctx.device, torch.bfloat16), torch.bfloat16
    ctx.manager.adopt(FLUX, Family.FLUX, pipe, dtype)
    ctx.manager.load(FLUX)
    ctx.say(f"FLUX.1-dev built on {ctx.device} ({'tiny' if ctx.dry else 'full size'}, {dtype}): {parameter_note(pipe)}")
    ctx.notes.append("FLUX rows: T5's tokenizer is a tiny stand-in (no offline T5 vocabulary); the real T5-XXL encoder reads "
                     "its token ids, padded to 512 as FLUX.1-dev's are.")


def build_face_files(ctx: GpuContext) -> None:
    """Face files in the official layouts: tiny ONNX detector/recognizer; EVA-CLIP, IDFormer and PuLID-FLUX full size."""
    from pipelines.bench import tiny_face, tiny_onnx

    transformer = ctx.pipe(FLUX).pipe.transformer
    if ctx.dry:
        tiny_face.write_face_models(ctx.models_dir, flux_transformer=transformer)
        ctx.manager.face.idformer_config = tiny_face.TINY_IDFORMER
        ctx.say("face files written (tiny)")
        return
    from safetensors.torch import save_file

    from pipelines.face.encoders import EVA_FILE
    from pipelines.face.eva_clip import EvaVisionConfig, EvaVisionTower
    from pipelines.face.idformer import IDFormer, IDFormerConfig
    from pipelines.face.pulid_weights import FluxCrossAttentionConfig, FluxIdCrossAttentions, official_state_dict

    tiny_onnx.write_antelopev2(ctx.models_dir / "insightface" / "antelopev2",
                               tiny_onnx.planted_from_photo((112, 112, 3), [tiny_face.HANKS_BOX]))
    tiny_face.write_bisenet(ctx.models_dir / "facexlib")
    torch.manual_seed(SEED)
    with torch.device(ctx.device):  # random init of ~900 M parameters: seconds on a GPU
        tower = EvaVisionTower(EvaVisionConfig()).eval()
        encoder = IDFormer(IDFormerConfig()).eval()
        blocks = FluxIdCrossAttentions.for_transformer(transformer, FluxCrossAttentionConfig()).eval()
    (ctx.models_dir / "eva_clip").mkdir(parents=True, exist_ok=True)
    torch.save(tiny_face.official_eva_checkpoint(tower.cpu()), ctx.models_dir / "eva_clip" / EVA_FILE)
    (ctx.models_dir / "pulid").mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in official_state_dict("flux", encoder.cpu(), blocks.cpu()).items()}
    save_file(state, str(ctx.models_dir / "pulid" / "pulid_flux_v0.9.1.safetensors"))
    del tower, encoder, blocks, state
    gc.collect()
    devices.free_device_memory(ctx.device)
    ctx.say("face files written: tiny ONNX detector/recognizer (real antelopev2 unavailable offline), full-size EVA02-CLIP-L, "
            "IDFormer and the 20 PuLID-FLUX cross-attention blocks")


SETUPS = {
    "sdxl": Setup("sdxl", cost_s=25, dry_cost_s=4, build=build_sdxl),
    "flux": Setup("flux", cost_s=60, dry_cost_s=4, build=build_flux),
    "face-files": Setup("face-files", cost_s=40, dry_cost_s=6, build=build_face_files),
}


# -- rows -------------------------------------------------------------------------------------------


def ours_vs_bare(ctx: GpuContext, request: GenerationRequest) -> list[Measure]:
    """Likeness end to end (`manager.generate`) against diffusers' `__call__` on the same modules, interleaved."""
    from pipelines.samplers import find_sampler

    model = ctx.pipe(request.model)
    pipe, family = model.pipe, model.family
    sampler = find_sampler(family, request.sampler)

    def bare():
        pipe.scheduler = sampler.make(model.base_scheduler_config)
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
    from pipelines.face.service import FaceOptions

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
    from pipelines.face.service import FaceOptions

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
    Row("sdxl-compile", "SDXL torch.compile of the UNet vs eager", 60, 150, 30, row_sdxl_compile, ("sdxl",)),
]
