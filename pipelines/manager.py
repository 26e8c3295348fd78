"""The one pipeline manager behind every tab, the CLI, the API and the benchmarks.

It owns the model catalog, the two-level model cache (see `model_cache.py` for the policy), the
device and dtype choice, and runs generations one at a time on the compute device.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image

from pipelines import devices
from pipelines.caches.approximate import DEFAULT_THRESHOLDS, ApproximateCache, ApproximateCacheConfig
from pipelines.caches.memo import MemoCache
from pipelines.catalog import DEMO_MODEL_NAME, ModelEntry, discover, folder_size
from pipelines.choices import HIRES_SAME_CHECKPOINT, REFINER_NONE
from pipelines.demo import prompt_notes
from pipelines.demo_model import demo_model_dir, demo_problem, ensure_demo_model
from pipelines.errors import InvalidRequest, LikenessError, ModelLoadError, ModelNotFound
from pipelines.families import Family
from pipelines.generate import CancelToken, LoadedModel, RunOptions, RunOutput, VaeSettings, decode_latents, dtype_name
from pipelines.extras import TileProgress, UpscaleContext, UpscaleRequest, UpscaleResult, plan_upscale, upscale_picture
from pipelines.face.options import FaceOptions
from pipelines.merge import KeyProgress, MergeRequest, MergeResult, merge_checkpoints
from pipelines.face.service import FaceService
from pipelines.fast_paths import FastPaths, apply_fast_paths
from pipelines.hooks.deepcache import DeepCacheConfig, DeepCacheHook, deepest_branch
from pipelines.hooks.flux_block_cache import FluxBlockCacheConfig, FluxBlockCacheHook
from pipelines.hooks.lora import AppliedLora, LoraHook, PassLoras
from pipelines.hooks.pulid_flux import PulidFluxConfig, PulidFluxHook
from pipelines.hooks.pulid_sdxl import PulidSdxlConfig, PulidSdxlHook
from pipelines.hooks.tiling import TilingHook
from pipelines.hooks.token_merging import TokenMergingHook
from pipelines.images import MAX_PHOTO_PIXELS, check_input_pixels
from pipelines.jobs import JobView, LocalJobs
from pipelines.metrics import psnr
from pipelines.preview.live import LivePreview, TinyDecoders
from pipelines.prompts.embeddings import EmbeddingLibrary
from pipelines.prompts.styles import STYLES_FILE, StyleLibrary
from pipelines.prompts.tokens import TokenCount, count_tokens, prompt_tokenizer
from pipelines.vae import VAE_CHOICES, resolve_vae_dtype
from pipelines.vae_files import VaeLibrary, find_vae
from pipelines.hashes import model_hash
from pipelines.loading import load_pipeline, pipeline_bytes
from pipelines.lora.files import LoraEntry, StateDictMemo, close_names, lora_hash, scan_loras
from pipelines.lora.fuse import FuseDecision, FusePolicy
from pipelines.lora.tags import infotext_hashes, lora_refs
from pipelines.model_cache import CachedModel, ModelCache
from pipelines.request import (GenerationRequest, GenerationResult, first_pass_steps, refiner_name, refiner_switch_step, second_checkpoint, shown,
                               validate_request)
from pipelines.samplers import find_sampler
from pipelines.stages import GenerationPlan, new_state, run_first_passes, run_plan, run_second_passes
from pipelines.stages.denoise import Denoise
from pipelines.stages.face_detail import FaceDetail, detail_lora_refs
from pipelines.stages.hires import FirstPassDecode, HiresPass, check_hires, hires_lora_refs, hires_steps
from pipelines.stages.init_image import ImgEncode, PasteBack, is_inpainting_model
from pipelines.stages.output import Save, VaeDecode, record_batch
from pipelines.stages.prepare import FaceEmbed, TextEncode
from pipelines.stages.refiner import RefinerDenoise
from pipelines.telemetry import Event, EventBus, Notice, StageClock
from pipelines.upscale import find_upscaler

log = logging.getLogger("likeness")


@dataclass
class ManagerConfig:
    models_dir: Path
    outputs_dir: Path
    cache_dir: Path
    device: str = "auto"
    ram_cache_bytes: int = 16 * 2**30
    vram_budget_bytes: int | None = None  # None: total GPU memory minus the working reserve
    vram_reserve_bytes: int = 3 * 2**30  # room for activations and the VAE decode
    include_hf_cache: bool = True
    hf_cache_dir: Path | None = None
    allow_pickle: bool = False
    preview_every: int = 5
    live_preview: str = "cheap"  # cheap | TAESD (pipelines/preview: the tiny autoencoders in models/VAE-approx)
    vae_tiling: bool = False  # always decode in tiles (large images on small GPUs)
    vae_slicing: bool = False  # decode a batch one image at a time
    vae_honour_force_upcast: bool = True  # a VAE whose config says force_upcast never runs in fp16
    vae_sticky_fallback: bool = True  # after a NaN fallback, decode in fp32 for the rest of the session (A1111)
    prompt_memo_policy: str = "lru"
    prompt_memo_entries: int = 64
    latent_cache_entries: int = 16  # 0 turns the exact-repeat latent cache off
    face_memo_entries: int = 16  # ID embeddings kept per set of reference photos
    onnx_gpu_mem_limit_mb: int = 2048  # cap on each onnxruntime CUDA session's arena (face models)
    approx_cache_thresholds: tuple = DEFAULT_THRESHOLDS  # (similarity, K of 50), highest first
    approx_cache_max_bytes: int = 1 << 30  # disk budget of the approximate latent cache (under cache_dir/approximate)
    approx_cache_ttl_seconds: float = 0.0  # 0 = entries stay until evicted
    approx_cache_uri: str = ""  # "" = the embedded faiss index; a Milvus Lite .db folder or a Milvus server URI
    approx_cache_folder: Path | None = None  # None: cache_dir/approximate (a Ray worker with an embedded store gets its own)
    approx_cache_maintains: bool = True  # eviction and expiry run here (for a shared Milvus server: the UI process only)
    torch_compile: str = "off"  # off | default | max-autotune: the denoiser, compiled on first use after each load
    channels_last: bool = False  # UNet and VAE convolutions in NHWC (pays on recent NVIDIA GPUs only)
    lora_memo_bytes: int = 2 * 2**30  # LoRA state dicts kept in RAM (a repeat does not read the file again)
    lora_fuse: str = "auto"  # auto: fuse a repeated LoRA set when measured faster | off | always (pipelines/lora/fuse.py)
    max_input_pixels: int = MAX_PHOTO_PIXELS  # init images and masks above this are refused (Settings: max_input_megapixels)
    styles_file: Path | None = None  # A1111's styles.csv; None: the models folder's


@dataclass(frozen=True)
class LoadReport:
    name: str
    source: str  # "disk", "RAM", or "already on device"
    seconds: float
    size_bytes: int
    device: str

    def describe(self) -> str:
        if self.source == "already on device":
            return f"{self.name} already on {self.device}"
        return f"loaded {self.name} from {self.source} in {self.seconds:.1f} s ({self.size_bytes / 2**30:.2f} GiB, {self.device})"


@dataclass
class KeptLatents:
    """The last generation's final latents, kept so they can be decoded again with another dtype."""

    model: str
    latents: torch.Tensor  # CPU copy, as the denoiser left them
    height: int
    width: int
    seeds: list[int]
    images: list  # the PIL images first decoded from them, to compare a re-decode against
    vae_label: str
    vae_path: Path | None = None  # the external VAE they were decoded with (A1111's SD VAE); None: the model's own


@dataclass(frozen=True)
class Redecode:
    images: list  # PIL images
    vae_label: str
    seconds: float
    notes: list[str]
    psnr_vs_first: list[float]  # dB against the images of the first decode


@dataclass
class _ModelFacts:
    base_scheduler_config: dict
    dtype: torch.dtype
    model_hash: str | None
    last_load: LoadReport | None = None


class PipelineManager:
    def __init__(self, config: ManagerConfig, bus: EventBus | None = None):
        self.config = config
        self.bus = bus or EventBus()
        self.device = devices.pick_device(config.device)
        if self.device.type == "cpu":  # denoising on the host: step buffers reused, not faulted in again
            devices.reuse_freed_host_memory()
        vram_budget = config.vram_budget_bytes
        total = devices.device_total_memory(self.device)
        if vram_budget is None and total is not None:
            vram_budget = max(total - config.vram_reserve_bytes, 0)
        self.cache = ModelCache(self.device, config.ram_cache_bytes, vram_budget, on_message=self._notice)
        self._facts: dict[str, _ModelFacts] = {}
        self._entries: dict[str, ModelEntry] = {}
        self._load_locks: dict[str, threading.Lock] = {}
        self._state_lock = threading.Lock()
        self._generation_lock = threading.Lock()  # one generation at a time on the compute device
        self._jobs = LocalJobs(lambda: self.device.type)  # what the queue readouts show: "this process (cpu)"
        # diffusers loads under accelerate's init_empty_weights, which patches torch.nn.Module
        # process-wide: two loads interleaving corrupt each other, so disk loads take turns.
        self._disk_load_lock = threading.Lock()
        # What the last decode really ran in, for the status bar. Per-user details (the kept latents,
        # each run's dtype) travel in the GenerationResult, never in shared manager state.
        self.last_vae_dtype: str | None = None
        self.vae_forced_fp32 = False  # set by a NaN fallback when the fallback is sticky
        self.prompt_memo = MemoCache("prompt embeddings", config.prompt_memo_policy, config.prompt_memo_entries)
        self.vaes = VaeLibrary()  # external VAEs (models/VAE), A1111's SD VAE
        self.embeddings = EmbeddingLibrary(Path(config.models_dir) / "embeddings", config.allow_pickle)  # textual inversions
        self.styles = StyleLibrary(config.styles_file or Path(config.models_dir) / STYLES_FILE)  # prompt styles
        self._approximate_cache: ApproximateCache | None = None
        self.latent_cache = MemoCache("final latents", "lru", config.latent_cache_entries) if config.latent_cache_entries > 0 else None
        self.face = FaceService(config.models_dir, self.device, MemoCache("face embeddings", "lru", config.face_memo_entries),
                                config.onnx_gpu_mem_limit_mb)
        self.lora_memo = StateDictMemo(config.lora_memo_bytes)
        self.lora_fuse = FusePolicy(config.lora_fuse)
        self.tiny_decoders = TinyDecoders()  # TAESD previews: loaded once per file, a bad file named once
        self._loras: dict[str, LoraEntry] = {}
        self.refresh()

    # -- catalog ----------------------------------------------------------------------------------

    def refresh(self) -> list[ModelEntry]:
        """Rescan the models folder (after the user drops new files in, or after Settings changed it)."""
        self._follow_models_dir()
        found = discover(self.config.models_dir, self.config.include_hf_cache, self.config.allow_pickle, self.config.hf_cache_dir)
        demo_path = demo_model_dir(self.config.cache_dir)
        # Its size on disk (a few small files; 0 for the random demo until it is built on first use).
        demo_size = folder_size(demo_path) if demo_path.is_dir() else 0
        demo = ModelEntry(DEMO_MODEL_NAME, Family.SD15, "demo", demo_path, demo_size, problem=demo_problem(demo_path))
        with self._state_lock:
            changed = {e.name: e for e in found} != {n: e for n, e in self._entries.items() if e.format != "demo"}
            self._entries = {e.name: e for e in found}
            self._entries[demo.name] = demo
        self.refresh_loras()
        if changed:
            self.clear_caches()  # a file replaced under the same name must not be served from a cache
        return self.models()

    def refresh_loras(self) -> list[LoraEntry]:
        """Rescan models/Lora (and models/loras) only; the model list and models built in memory stay."""
        loras = {e.name: e for e in scan_loras(self.config.models_dir)}
        with self._state_lock:
            self._loras = loras
        return list(loras.values())

    def loras(self) -> list[LoraEntry]:
        """The LoRA files in models/Lora (and models/loras), with family, size and any problem."""
        with self._state_lock:
            return list(self._loras.values())

    def lora_entry(self, name: str) -> LoraEntry:
        with self._state_lock:
            found = self._loras.get(name)
            names = sorted(self._loras)
        if found is None:
            close = close_names(name, names)
            hint = f" Close names: {', '.join(close)}." if close else (f" Available: {', '.join(names)}." if names else "")
            raise InvalidRequest(f"No LoRA named {name!r} in {self.config.models_dir / 'Lora'}.{hint}")
        return found

    def _follow_models_dir(self) -> None:
        """The face files and the embeddings live under the models folder: follow it (and the pickle setting)."""
        self.face.models_dir = self.config.models_dir
        folder = Path(self.config.models_dir) / "embeddings"
        if (self.embeddings.folder, self.embeddings.allow_pickle) != (folder, self.config.allow_pickle):
            self.embeddings = EmbeddingLibrary(folder, self.config.allow_pickle)

    def caches(self) -> list:
        """Every cache, for the Caches panel: the in-memory memos, then the approximate latent cache on disk."""
        return self.memory_caches() + [self.approximate_cache()]

    def memory_caches(self) -> list[MemoCache]:
        return [cache for cache in (self.prompt_memo, self.latent_cache, self.face.memo) if cache is not None]

    def clear_caches(self) -> None:
        # Not the approximate cache: it persists on purpose, and its entries are keyed by the model's identity.
        for cache in self.memory_caches():
            cache.clear()

    def approximate_cache(self) -> ApproximateCache:
        """Opened on first use (reads and checks the folder; off by default, so most sessions never do)."""
        with self._state_lock:
            if self._approximate_cache is None:
                config = self.config
                self._approximate_cache = ApproximateCache(config.approx_cache_folder or config.cache_dir / "approximate", ApproximateCacheConfig(
                    config.approx_cache_thresholds, config.approx_cache_max_bytes, config.approx_cache_ttl_seconds,
                    uri=config.approx_cache_uri), maintains=config.approx_cache_maintains)
            return self._approximate_cache

    def models(self) -> list[ModelEntry]:
        with self._state_lock:
            return list(self._entries.values())

    def has_real_models(self) -> bool:
        return any(e.usable and e.format != "demo" for e in self.models())

    def default_model(self) -> str:
        """The first usable real model, else the demo."""
        for entry in self.models():
            if entry.usable and entry.format != "demo":
                return entry.name
        return DEMO_MODEL_NAME

    def entry(self, name: str) -> ModelEntry:
        if not isinstance(name, str):  # an API caller's list or dict: not a name (and not hashable)
            raise ModelNotFound(f"The model must be given by its name (text), got {shown(name)}.")
        with self._state_lock:
            found = self._entries.get(name)
        if found is None:
            names = ", ".join(sorted(self._entries)) or "none"
            raise ModelNotFound(f"No model named {name!r}. Available: {names}. Put models in {self.config.models_dir} and refresh.")
        return found

    def prepare_demo_model(self) -> Path:
        """The demo model's folder, checked; a ModelLoadError naming the missing or damaged file."""
        return ensure_demo_model(self.config.cache_dir)

    def prompt_tokens(self, name: str, text: str, steps: int = 20) -> TokenCount | None:
        """A1111's token counter for `text` on model `name`, from its tokenizer alone (the model is not loaded); None
        when the model cannot say (unknown, unusable, or its tokenizer files missing: its load names them)."""
        try:
            entry = self.entry(name)
            if entry.family is None or not entry.usable:
                return None
            path = self.prepare_demo_model() if entry.format == "demo" else entry.path
            tokenizer = prompt_tokenizer(entry.family, entry.format, path, entry.base_path)
            used = self.embeddings.used_in(text or "", "") if entry.family is not Family.FLUX else []
        except (LikenessError, OSError, ValueError) as error:
            log.debug("no token count for %s: %s", name, error)
            return None
        return count_tokens(tokenizer, entry.family, text, steps, used)

    # -- loading ----------------------------------------------------------------------------------

    def load(self, name: str) -> LoadReport:
        """Make `name` ready on the compute device, loading from disk or RAM as needed; timed."""
        entry = self.entry(name)
        if not entry.usable:  # the catalog already knows why (a damaged file, an unknown layout)
            raise ModelLoadError(entry.problem)
        cached, report = self._acquire(name)
        self.cache.release(cached)
        self._facts[name].last_load = report  # what the user asked for, even "already loaded"
        return report

    @contextmanager
    def use(self, name: str, clock: StageClock | None = None) -> Iterator[LoadedModel]:
        """Load if needed and lock the model for the duration; always unlocks.

        Loading and locking happen together under the model's load lock, so another thread's load
        can never evict the model between the two. With a `clock`, a load is timed as a stage.
        """
        entry = self.entry(name)
        cached, _report = self._acquire(name, clock)
        try:
            facts = self._facts[name]
            yield LoadedModel(name, entry.family, cached.pipe, facts.base_scheduler_config, facts.dtype, self.device, facts.model_hash)
        finally:
            self.cache.release(cached)

    def _acquire(self, name: str, clock: StageClock | None = None) -> tuple[CachedModel, LoadReport]:
        """Lock `name` in the cache, loading it from disk or moving it from RAM first if needed."""
        entry = self.entry(name)
        with self._state_lock:
            load_lock = self._load_locks.setdefault(name, threading.Lock())
        with load_lock:  # two tabs asking for the same model load it once
            cached = self.cache.acquire(name)
            if cached is not None and (cached.on_device or not self.cache.uses_gpu):
                # Nothing to do: not worth a notice on every generation.
                return cached, LoadReport(name, "already on device" if cached.on_device else "RAM", 0.0, cached.size_bytes, str(self.device))
            with (clock.stage("model load") if clock else nullcontext({})) as info:
                if cached is not None:
                    seconds = self.cache.move_to_device(name)
                    report = LoadReport(name, "RAM", seconds, cached.size_bytes, str(self.device))
                else:
                    cached, report = self._load_from_disk(entry)
                info["detail"] = report.describe()
        self._facts[name].last_load = report
        self._notice(report.describe())
        return cached, report

    def _load_from_disk(self, entry: ModelEntry) -> tuple[CachedModel, LoadReport]:
        """Load, put in the cache already locked (so no eviction can race the caller), move to the device."""
        start = time.perf_counter()
        if entry.format == "demo":
            self.prepare_demo_model()
        dtype = devices.denoiser_dtype(self.device, entry.family.value)
        with self._disk_load_lock:
            pipe = load_pipeline(entry, dtype)
        for note in apply_fast_paths(pipe, FastPaths(self.config.torch_compile, self.config.channels_last)):
            log.info("%s: %s", entry.name, note)
        size = pipeline_bytes(pipe)
        digest = None
        if entry.path.is_file():
            digest = model_hash(entry.path, self.config.cache_dir / "hashes.json")
        self._facts[entry.name] = _ModelFacts(dict(pipe.scheduler.config), dtype, digest)
        cached = self.cache.put(entry.name, pipe, size, locked=True)
        if self.cache.uses_gpu:
            self.cache.move_to_device(entry.name)
        devices.synchronize(self.device)
        return cached, LoadReport(entry.name, "disk", time.perf_counter() - start, size, str(self.device))

    def unload(self, name: str) -> bool:
        dropped = self.cache.drop(name)
        if dropped:
            self._notice(f"Unloaded {name}.")
        return dropped

    def offload_models(self) -> list[str]:
        """Free the GPU: every model not in use moves to RAM (the RAM cache keeps it; the next run brings it back)."""
        moved = self.cache.offload_idle()
        if moved:
            self._notice(f"Moved {', '.join(moved)} to RAM (GPU memory freed).")
        return moved

    def adopt(self, name: str, family: Family, pipe, dtype: torch.dtype) -> None:
        """Register a pipeline built in memory under `name`, as if loaded from disk (the GPU benchmark's
        full-size random-weight models): it enters the cache and runs through the same `generate`.
        A later `refresh()` forgets it, as it forgets any model no longer in the models folder."""
        pipe.set_progress_bar_config(disable=True)
        with self._state_lock:
            self._entries[name] = ModelEntry(name, family, "memory", Path(f"<memory>/{name}"), 0)
        self._facts[name] = _ModelFacts(dict(pipe.scheduler.config), dtype, None)
        self.cache.put(name, pipe, pipeline_bytes(pipe))

    def last_load(self, name: str) -> LoadReport | None:
        facts = self._facts.get(name)
        return facts.last_load if facts else None

    # -- generation -------------------------------------------------------------------------------

    def generate(
        self,
        request: GenerationRequest,
        listener: Callable[[Event], None] | None = None,
        cancel: CancelToken | None = None,
        telemetry: bool = True,
        face: FaceOptions | None = None,
        reuse_latents: bool = True,
    ) -> GenerationResult:
        """Validate, load, lock, run the plan's stages. Raises LikenessError subclasses with user-facing messages.

        With `telemetry=False` no per-step device synchronization happens and no events are sent
        (the benchmark compares both, to measure what the readout costs). With `reuse_latents=False`
        the exact-repeat latent cache is bypassed (experiments time every repeat's denoise).
        """
        entry = self.entry(request.model)
        if not entry.usable:
            raise ModelLoadError(entry.problem)
        request = self.styles.expand(request)  # the styles' words, before any cache key is made of the prompt
        for what, image in (("The init image", request.init_image), ("The mask", request.mask)):
            if isinstance(image, Image.Image):  # anything else is validate_request's to refuse
                check_input_pixels(image.size, self.config.max_input_pixels, what)
        validated = validate_request(request, entry.family)
        check_hires(validated.request, self.config.models_dir, self.config.allow_pickle)  # before the model loads
        refiner = self.check_refiner(validated.request)  # likewise (named, it must be installed even when it gets no step)
        second = refiner if refiner_switch_step(validated.request) is not None else self.check_hires_checkpoint(validated.request)
        vae_path = find_vae(validated.request.vae, self.config.models_dir, self.config.allow_pickle)  # likewise
        face = face.for_family(entry.family) if face is not None else None  # the family's ID weight default and range
        bus = EventBus()
        if telemetry:
            if listener:
                bus.subscribe(listener)
            bus.subscribe(self.bus.publish)
        options = self._run_options(validated.request, telemetry, cancel, reuse_latents)
        with self._jobs.track(request) as started, self._generation_lock:
            started()
            start = time.perf_counter()
            devices.reset_peak_memory(self.device)
            clock = StageClock(bus, self.device)
            if second is None:
                lora_steps: list[float] = []  # filled after the run, for the fuse policy
                with self.use(request.model, clock) as model, self._applied_loras(model, validated.request, clock, options, lora_steps) as model, \
                        self._chosen_vae(model, vae_path, clock) as model:
                    output = run_plan(self._plan(model, validated, options, bus, clock, face), record_batch)
                    lora_steps += output.step_seconds
            else:
                model, output = self._run_split(validated, second, options, bus, clock, face, vae_path)
            memory = devices.read_memory(self.device)
            total = time.perf_counter() - start
            kept = self._kept_latents(model.name, validated.request, output, vae_path)  # the model that decoded them
        devices.trim_host_heap()
        self._note_vae_fallback(output)
        peak = memory.device_peak_bytes if memory.device_peak_bytes is not None else memory.process_rss_bytes
        return GenerationResult(
            images=output.images,
            request=validated.request,
            stage_seconds=dict(clock.seconds),
            stage_details=dict(clock.details),
            step_seconds=output.step_seconds,
            total_seconds=total,
            peak_memory_bytes=peak,
            memory_kind="GPU allocator peak" if memory.device_peak_bytes is not None else "process RSS",
            device=str(self.device),
            denoiser_dtype=dtype_name(model.dtype),
            vae_dtype=output.vae_label,
            warnings=output.warnings + prompt_notes(entry.format, entry.path, request.prompt),
            cache_notes=output.cache_notes,
            hook_stats=output.hook_stats,
            kept_latents=kept,
        )

    def model_names(self, family: Family | None = None) -> list[str]:
        """The usable models' names, of `family` only when given."""
        return [e.name for e in self.models() if e.usable and (family is None or e.family is family)]

    def hires_checkpoint_choices(self, family: Family | None) -> list[str]:
        """A1111's "Use same checkpoint", then the models a hires pass after a `family` model can run on (its family's:
        the hires pass goes on from the first pass's latents)."""
        return [HIRES_SAME_CHECKPOINT, *self.model_names(family)]

    def refiner_choices(self, family: Family | None) -> list[str]:
        """A1111's "None", then the models that can take over from a `family` model's denoise (its family's)."""
        return [REFINER_NONE, *self.model_names(family)]

    def check_hires_checkpoint(self, request: GenerationRequest) -> str | None:
        """A1111's Hires checkpoint, checked before anything loads: None for the first pass's model, else an installed,
        usable model of its family; the message a generation gives for one that cannot (not installed, unusable,
        another family)."""
        return self._check_second_model(request, second_checkpoint(request), "hires checkpoint", "the hires pass goes on from the first pass's latents")

    def check_refiner(self, request: GenerationRequest) -> str | None:
        """A1111's Refiner, checked as the hires checkpoint is: None without one, else an installed model of the family."""
        return self._check_second_model(request, refiner_name(request), "refiner", "the refiner goes on from the model's latents")

    def _check_second_model(self, request: GenerationRequest, name: str | None, what: str, why: str) -> str | None:
        if name is None:
            return None
        first = self.entry(request.model)
        try:
            entry = self.entry(name)
        except ModelNotFound:
            installed = ", ".join(self.model_names(first.family))
            raise InvalidRequest(f"The {what} {name!r} is not installed; {first.family.spec.label} models here: {installed}.") from None
        if not entry.usable:
            raise ModelLoadError(f"The {what} {name!r} cannot be used: {entry.problem}")
        if entry.family is not first.family:
            raise InvalidRequest(f"The {what} {name!r} is {entry.family.spec.label}, the first pass's model {first.name!r} "
                                 f"{first.family.spec.label}: {why}, so both must be of one family.")
        return entry.name

    def _run_split(self, validated, second: str, options: RunOptions, bus: EventBus, clock: StageClock, face: FaceOptions | None,
                   vae_path: Path | None) -> tuple[LoadedModel, RunOutput]:
        """A refiner, or the hires pass on another checkpoint: every batch's denoise on the request's model (to the
        refiner's switch step, or the whole first pass), then the rest on `second`. Each model loads (and takes the
        prompt's LoRAs and the SD VAE) once, whatever the batch count, and the first is unlocked before the second
        loads, so the cache may move it out of VRAM. Returns the second model and the run's output."""
        request = validated.request
        switch = refiner_switch_step(request)
        with self.use(request.model, clock) as model, self._applied_loras(model, request, clock, options, []) as model, \
                self._chosen_vae(model, vae_path, clock) as model:
            # A denoise stopped at the switch is no run's result: the exact-repeat cache neither serves nor keeps it.
            first_options = options if switch is None else dataclasses.replace(options, latent_cache=None)
            plan = self._plan(model, validated, first_options, bus, clock, face, split="first")
            state = new_state(plan, (first_pass_steps(request) + hires_steps(request)) * request.batch_count)  # every pass's steps
            passes = run_first_passes(plan, state)
        first_model = model
        # The second model's own hooks (a hook attaches to one model at a time) and the first pass's infotext keys.
        second_options = dataclasses.replace(options, hooks=[], approximate_cache=None, latent_cache=None, infotext_extra=dict(options.infotext_extra),
                                             pass_loras={}, true_cfg_scale=1.0)
        with self.use(second, clock) as model, self._applied_loras(model, request, clock, second_options, []) as model, \
                self._chosen_vae(model, vae_path, clock) as model:
            plan = self._plan(model, validated, second_options, bus, clock, face, split="second", first_model=first_model)
            return model, run_second_passes(plan, state, passes, record_batch)

    @contextmanager
    def _chosen_vae(self, model: LoadedModel, path: Path | None, clock: StageClock | None = None) -> Iterator[LoadedModel]:
        """A1111's SD VAE: the external VAE replaces the model's own for this run (same device and dtype), then the
        model's own is put back whatever happens and the external one goes back to RAM. Yields the model with the
        VAE's name and A1111's hash of its file, for the infotext."""
        if path is None:
            yield model
            return
        own = model.pipe.vae
        with clock.stage("model load") if clock is not None else nullcontext() as info:
            external, digest, kept = self.vaes.get(path, own, Path(self.config.cache_dir) / "hashes.json")
            external.to(device=own.device, dtype=own.dtype)
            if info is not None:  # after the model's own load note, in the same stage
                info["detail"] = "; ".join(filter(None, [clock.details.get("model load", ""), f"VAE {path.name} from {'RAM' if kept else 'disk'}"]))
        model.pipe.vae = external
        try:
            yield dataclasses.replace(model, vae=(path.name, digest))
        finally:
            model.pipe.vae = own
            external.to("cpu")

    def _run_options(self, request: GenerationRequest, telemetry: bool, cancel: CancelToken | None, reuse_latents: bool) -> RunOptions:
        return RunOptions(
            outputs_dir=str(self.config.outputs_dir) if request.save else None,
            preview_every=self.config.preview_every if telemetry else 0,
            live_preview=LivePreview(self.config.live_preview, self.config.models_dir, self.config.allow_pickle, self.tiny_decoders),
            synchronize_steps=telemetry,
            cancel=cancel or CancelToken(),
            vae=self._vae_settings(request.vae_dtype),
            prompt_memo=self.prompt_memo,
            embeddings=self.embeddings,
            latent_cache=self.latent_cache if reuse_latents else None,
            approximate_cache=self.approximate_cache() if request.approximate_cache else None,
        )

    def _plan(self, model: LoadedModel, validated, options: RunOptions, bus: EventBus, clock: StageClock,
              face: FaceOptions | None, split: str = "", first_model: LoadedModel | None = None) -> GenerationPlan:
        """The stages this request asks for, in order, and the hooks they attach. `split`: "first" or "second" for the
        two plans of a hires pass on another checkpoint (the first passes; then the hires pass and the rest)."""
        request = validated.request
        if is_inpainting_model(model) and request.mode != "inpaint":
            raise InvalidRequest(f"{model.name} is an inpainting model (a 9-channel UNet): it needs an init image and a mask. "
                                 "Use the img2img tab's inpaint mode, or a text-to-image model.")
        model.pipe.scheduler = find_sampler(model.family, request.sampler).make(model.base_scheduler_config, request.schedule_type, model.family)
        options.hooks += self._cache_hooks(model, request, options) + ([TilingHook()] if request.tiling else []) + \
            ([TokenMergingHook(float(request.token_merging_ratio))] if request.token_merging_ratio > 0 else [])
        prepare = [TextEncode(), ImgEncode()]
        if face is not None:
            prepare.insert(0, FaceEmbed(lambda: self._face_hook(model, face), face, lambda: self.face.last_provider))
        first_steps, switch = first_pass_steps(request), refiner_switch_step(request)
        on_first = first_steps if switch is None else switch - (request.steps - first_steps)  # the first model's steps
        hires = HiresPass(self.config.models_dir, self.config.allow_pickle)
        after_denoise = [hires, VaeDecode(), PasteBack(), FaceDetail(self.face)]
        if split == "first":
            handover = [Denoise()] if switch is not None else [Denoise(), FirstPassDecode(self._decodes_first_pass(request))]
            return GenerationPlan(model, validated, options, bus, clock, prepare=prepare, per_batch=handover, steps_per_batch=on_first,
                                  stop_after=switch)
        if split == "second":
            if switch is not None:  # the refiner goes on from latents: the init image is not encoded again
                prepare = [stage for stage in prepare if not isinstance(stage, ImgEncode)]
            return GenerationPlan(model, validated, options, bus, clock, prepare=prepare, per_batch=[RefinerDenoise(), *after_denoise],
                                  finish=[Save()], steps_per_batch=first_steps - on_first + hires_steps(request),
                                  step_base=on_first * request.batch_count, first_model=first_model, resume_at=switch)
        return GenerationPlan(model, validated, options, bus, clock, prepare=prepare, per_batch=[Denoise(), *after_denoise],
                              finish=[Save()], steps_per_batch=first_steps + hires_steps(request))

    def _decodes_first_pass(self, request: GenerationRequest) -> bool:
        """Whether the hires upscaler works on the decoded picture (not on the latents), resolved once a run."""
        return find_upscaler(request.hires_upscaler, self.config.models_dir, self.config.allow_pickle).kind != "latent"

    def _kept_latents(self, name: str, request: GenerationRequest, output, vae_path: Path | None) -> KeptLatents | None:
        """The last batch's final latents, for Re-decode (kept by the caller, per browser session)."""
        if output.last_latents is None:
            return None
        last = output.images[-output.last_latents.shape[0]:]
        width, height = output.latent_size
        # Re-decode compares against what these latents first decoded to: the picture before any face detailer.
        return KeptLatents(name, output.last_latents, height, width, [img.seed for img in last],
                           [img.image if img.before_detail is None else img.before_detail for img in last], output.vae_label, vae_path)

    def _note_vae_fallback(self, output) -> None:
        self.last_vae_dtype = output.vae_label
        if output.fell_back and self.config.vae_sticky_fallback and not self.vae_forced_fp32:
            self.vae_forced_fp32 = True
            self._notice("The VAE decodes in fp32 for the rest of this session after a NaN fallback (Settings: sticky fallback).")

    @contextmanager
    def _applied_loras(self, model: LoadedModel, request: GenerationRequest, clock: StageClock, options: RunOptions,
                       step_seconds: list[float]) -> Iterator[LoadedModel]:
        """The prompt's `<lora:name:weight>` tags applied for the whole run (text encode included, for
        text-encoder LoRAs); yields the model with its LoRA set in `identity`, so every cache keys on it.

        Fused or not is the fuse policy's call; the two are the same computation up to float rounding,
        so the caches do not tell them apart. The caller fills `step_seconds` for the policy to learn from.
        """
        refs = lora_refs(request.prompt)  # a name given twice keeps its last weight
        pass_refs = {name: found for name, found in (("hires", hires_lora_refs(request, refs)), ("face detail", detail_lora_refs(request, refs)))
                     if found is not None}
        if not refs and not pass_refs:
            yield model
            return
        applied = self._usable_loras(model, refs)
        pass_loras = {name: self._usable_loras(model, found) for name, found in pass_refs.items()}
        key = (model.name, tuple(lora.key() for lora in applied), request.width, request.height)
        # Fused weights are restored and fused again at every swap: a run whose later pass swaps LoRAs stays unfused.
        decision = self.lora_fuse.decide(key, request.steps) if not pass_loras else FuseDecision(False, "a later pass has its own LoRAs")
        hook = LoraHook(applied, self.lora_memo, fuse=decision.fuse)
        with clock.stage("LoRA load") as info:
            hook.attach(model.pipe)
            info["detail"] = f"{len(applied)} LoRA(s), {hook.last_from_memo} from RAM, {decision.reason}"
        try:
            used = {lora.name: lora.digest for lora in applied + [lora for loras in pass_loras.values() for lora in loras]}
            if used:
                options.infotext_extra["Lora hashes"] = infotext_hashes(list(used.items()))
            options.pass_loras = {name: PassLoras(LoraHook(loras, self.lora_memo), hook) for name, loras in pass_loras.items()}
            passes = tuple((name, swap.hook.cache_key()) for name, swap in options.pass_loras.items())
            yield dataclasses.replace(model, adapters=hook.cache_key() + passes)
        finally:
            hook.detach(model.pipe)
        self.lora_fuse.record(key, decision.fuse, step_seconds, hook.fuse_seconds)

    def _usable_loras(self, model: LoadedModel, refs: list) -> list[AppliedLora]:
        """The LoRAs `refs` name, checked against the model's family; InvalidRequest / ModelLoadError naming one."""
        applied = []
        for ref in refs:
            entry = self.lora_entry(ref.name)
            if problem := entry.unusable_with(model.family):
                raise (InvalidRequest if entry.usable else ModelLoadError)(f"LoRA {ref.name!r}: {problem}")
            applied.append(AppliedLora(entry.name, entry.path, ref.weight, lora_hash(entry.path), ref.unet_weight))
        return applied

    def _cache_hooks(self, model: LoadedModel, request: GenerationRequest, options: RunOptions) -> list:
        """The per-generation acceleration hooks the request asks for."""
        hooks = []
        if request.deepcache_interval > 1:
            deepest = deepest_branch(model.pipe.unet)
            if request.deepcache_branch > deepest:
                raise InvalidRequest(f"DeepCache branch {request.deepcache_branch} is too deep for {model.name}: use 0 to {deepest}.")
            config = DeepCacheConfig(request.deepcache_interval, request.deepcache_branch, request.deepcache_schedule)
            hooks.append(DeepCacheHook(config))
            options.infotext_extra["DeepCache"] = f"N={config.interval} B={config.branch} {config.schedule}"
        if request.flux_cache != "off":
            hooks.append(FluxBlockCacheHook(FluxBlockCacheConfig(request.flux_cache, request.flux_cache_threshold)))
            options.infotext_extra["Block cache"] = f"{request.flux_cache} {request.flux_cache_threshold:g}"
        return hooks

    def _face_hook(self, model: LoadedModel, face: FaceOptions):
        """Build the PuLID hook for this model from the reference photos (memoized by content)."""
        if model.family not in (Family.SDXL, Family.FLUX):
            raise InvalidRequest(f"PuLID face reference works with SDXL and FLUX.1 models; {model.name} is {model.family.spec.label}.")
        self.face.require_files(model.family)
        if model.family is Family.SDXL:
            weights = self.face.weights(model.family, unet=model.pipe.unet)
            identity = self.face.identity(face, model.family, weights)
            config = PulidSdxlConfig(id_scale=face.id_weight, num_zero=face.num_zero, ortho=face.ortho, start_step=face.start_step)
            hook = PulidSdxlHook(weights.injection, identity.embedding.cond, identity.embedding.uncond, config, weights.tag)
        else:
            weights = self.face.weights(model.family, transformer=model.pipe.transformer)
            identity = self.face.identity(face, model.family, weights)
            config = PulidFluxConfig(id_weight=face.id_weight, start_step=face.start_step)
            hook = PulidFluxHook(weights.injection, identity.embedding.cond, identity.embedding.uncond, config, weights.tag)
        return hook, identity

    def _vae_settings(self, requested: str) -> VaeSettings:
        config = self.config
        return VaeSettings(requested, config.vae_tiling, config.vae_slicing, config.vae_honour_force_upcast, self.vae_forced_fp32)

    def vae_status(self) -> str:
        """What 'auto' decodes in on this device and why; for the start-up log and the status bar."""
        if self.vae_forced_fp32:
            return "fp32 (kept after a NaN fallback this session)"
        choice = resolve_vae_dtype("auto", self.device)
        return f"{choice.name} ({choice.reason})"

    def vae_auto_brief(self) -> str:
        """What 'auto' decodes in here, in a few words: the VAE radio's hint ('fp32 on this CPU')."""
        if self.vae_forced_fp32:
            return "fp32 (kept after a NaN fallback this session)"
        return resolve_vae_dtype("auto", self.device).short

    def redecode(self, kept: KeptLatents | None, vae_dtype: str) -> Redecode:
        """Decode a generation's kept latents (`GenerationResult.kept_latents`) again in another dtype.

        The caller keeps them (the UI per browser session), so one user never decodes another's image.
        """
        if kept is None:
            raise InvalidRequest("Nothing to re-decode yet: generate an image first.")
        if vae_dtype not in VAE_CHOICES:
            raise InvalidRequest(f"VAE dtype must be one of {', '.join(VAE_CHOICES)}, got {vae_dtype!r}.")
        with self._generation_lock, self.use(kept.model) as model, self._chosen_vae(model, kept.vae_path) as model:
            devices.synchronize(self.device)
            start = time.perf_counter()
            images, outcome = decode_latents(model, kept.latents.to(self.device), kept.height, kept.width, self._vae_settings(vae_dtype))
            devices.synchronize(self.device)
            seconds = time.perf_counter() - start
        return Redecode(images, outcome.label(), seconds, outcome.notes, [psnr(a, b) for a, b in zip(kept.images, images)])

    def upscale(self, request: UpscaleRequest, progress: TileProgress | None = None,
                cancel: CancelToken | None = None) -> UpscaleResult:
        """Extras: upscale a finished picture on this process's device, one GPU job at a time with the generations.
        Refused (InvalidRequest) before it waits for the device when a field is wrong."""
        config = self.config
        plan = plan_upscale(request, Path(config.models_dir), config.allow_pickle)
        context = UpscaleContext(Path(config.models_dir), Path(config.outputs_dir), self.device,
                                 devices.denoiser_dtype(self.device, Family.SD15.value), config.allow_pickle)
        with self._jobs.track(request) as started, self._generation_lock:
            started()
            with StageClock(self.bus, self.device).stage("upscale"):
                return upscale_picture(request, context, progress, cancel, plan)

    def merge(self, request: MergeRequest, progress: KeyProgress | None = None, cancel: CancelToken | None = None) -> MergeResult:
        """Checkpoint merger: a new single-file model from two or three (`pipelines.merge`), on the CPU and
        outside the generation lock (it needs RAM and disk, not the device); the catalog is rescanned so the
        new model is listed at once, under the name the result gives."""
        result = merge_checkpoints(request, self.entry, progress, cancel,
                                   find_vae=lambda name: find_vae(name, self.config.models_dir, self.config.allow_pickle))
        entries = self.refresh()
        result.name = next((entry.name for entry in entries if entry.path == result.path), result.name)
        return result

    # -- status -----------------------------------------------------------------------------------

    def jobs(self) -> list[JobView]:
        """The generation running here (worker: "this process") and those waiting for it, in order."""
        return self._jobs.snapshot()

    def status(self) -> dict:
        return {
            "device": devices.describe_device(self.device),
            "models_dir": str(self.config.models_dir),
            "loaded": [r.__dict__ for r in self.cache.records()],
            "vae_dtype": self.last_vae_dtype,
            "vae_policy": self.vae_status(),
            "ram_cache_bytes": self.cache.ram_bytes(),
            "vram_cache_bytes": self.cache.vram_bytes(),
            "memory": devices.read_memory(self.device).describe(),
        }

    def _notice(self, text: str) -> None:
        log.info(text)
        self.bus.publish(Notice(text))
