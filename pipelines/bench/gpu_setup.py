"""What the rows of `bench --suite gpu` share: the models, the face files, the profile and the timer.

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

import gc
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines import devices
from pipelines.bench.gpu import Setup
from pipelines.families import Family
from pipelines.request import GenerationRequest

SEED = 1234
PROMPT = "a lighthouse on a cliff at dusk, oil painting, dramatic light"
NEGATIVE = "blurry, low quality"
SDXL = "gpu-sdxl"
FLUX = "gpu-flux"
SWAP = "gpu-sdxl-disk"

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
