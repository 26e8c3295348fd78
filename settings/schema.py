"""Application settings: typed fields with defaults, validated on load, saved atomically.

Precedence: command-line flag > environment variable > settings file > default. A settings file
that cannot be read is kept as a `.bak` copy and the defaults are used, with a message saying so.

Flags and environment variables are one-off: the store remembers which fields they set and writes
the file's own values for those fields (or leaves them out), unless the user changes them in the
Settings tab. Folders inside the project are written relative to it, so the file survives the
project being moved; relative folders in the file are read relative to the project, not the
working directory.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from pipelines.atomic import remove_stale_temporaries, write_text_atomically
from pipelines.caches.vector_store import uri_problem
from pipelines.lora.fuse import LORA_FUSE_MODES
from pipelines.preview import PREVIEW_CHOICES

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SETTINGS_FILE = PROJECT_ROOT / "settings" / "user_settings.json"
ENVIRONMENT = {
    "models_dir": "LIKENESS_MODELS_DIR",
    "outputs_dir": "LIKENESS_OUTPUTS_DIR",
    "cache_dir": "LIKENESS_CACHE_DIR",
    "device": "LIKENESS_DEVICE",
    "approx_cache_uri": "LIKENESS_APPROX_CACHE_URI",
}
FLAGS = {name: "--" + name.replace("_", "-") for name in ENVIRONMENT}  # the same names as command-line flags
PATH_FIELDS = ("models_dir", "outputs_dir", "cache_dir")
MAX_INPUT_MEGAPIXELS = 175.0  # PIL itself refuses to open images above ~179 megapixels (its decompression-bomb limit)


def resolve_path(text: str) -> str:
    """A folder as the app uses it: `~` expanded, a relative one taken from the project folder."""
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else PROJECT_ROOT / path)


def portable_path(text: str) -> str:
    """A folder as the file stores it: relative when inside the project folder, else unchanged."""
    try:
        return Path(text).relative_to(PROJECT_ROOT).as_posix() or "."
    except ValueError:
        return text


@dataclass
class AppSettings:
    models_dir: str = str(PROJECT_ROOT / "models")
    outputs_dir: str = str(PROJECT_ROOT / "outputs")
    cache_dir: str = str(PROJECT_ROOT / ".cache")
    device: str = "auto"
    ram_cache_gb: float = 16.0
    vram_reserve_gb: float = 3.0
    include_hf_cache: bool = True
    allow_pickle: bool = False
    preview_every: int = 5
    live_preview: str = "cheap"  # cheap | TAESD
    max_queue_size: int = 16
    vae_dtype: str = "auto"
    vae_tiling: bool = False
    vae_slicing: bool = False
    vae_honour_force_upcast: bool = True
    vae_sticky_fallback: bool = True
    prompt_memo_policy: str = "lru"
    prompt_memo_entries: int = 64
    latent_cache_entries: int = 16
    face_memo_entries: int = 16
    onnx_gpu_mem_limit_mb: int = 2048
    torch_compile: str = "off"
    channels_last: bool = False
    lora_fuse: str = "auto"
    experiment_confirm_cells: int = 16
    max_input_megapixels: float = 100.0  # init images and masks above this are refused (read from the header, before decoding)
    approx_cache_thresholds: str = "0.95,0.90,0.85,0.75,0.65"
    approx_cache_max_mb: int = 1024
    approx_cache_ttl_hours: float = 0.0
    approx_cache_uri: str = ""  # empty: the embedded faiss index; a Milvus URI: ./cache.db (Milvus Lite) or http://host:19530
    last_generation: dict = field(default_factory=dict)

    def validate(self) -> dict[str, str]:
        """Field name -> what is wrong with its value (empty when all is well)."""
        checks = {
            "ram_cache_gb": (self.ram_cache_gb > 0, "must be positive"),
            "vram_reserve_gb": (self.vram_reserve_gb >= 0, "must not be negative"),
            "preview_every": (self.preview_every >= 0, "must be 0 (off) or more"),
            "live_preview": (self.live_preview in PREVIEW_CHOICES, f"must be {' or '.join(PREVIEW_CHOICES)}"),
            "max_queue_size": (self.max_queue_size >= 1, "must be at least 1"),
            "prompt_memo_policy": (self.prompt_memo_policy in ("lru", "lfu", "fifo", "lifo", "random", "ttl"), "must be lru, lfu, fifo, lifo, random or ttl"),
            "prompt_memo_entries": (self.prompt_memo_entries >= 1, "must be at least 1"),
            "latent_cache_entries": (self.latent_cache_entries >= 0, "must be 0 (off) or more"),
            "face_memo_entries": (self.face_memo_entries >= 1, "must be at least 1"),
            "onnx_gpu_mem_limit_mb": (self.onnx_gpu_mem_limit_mb >= 256, "must be at least 256"),
            "torch_compile": (self.torch_compile in ("off", "default", "max-autotune"), "must be off, default or max-autotune"),
            "lora_fuse": (self.lora_fuse in LORA_FUSE_MODES, f"must be {', '.join(LORA_FUSE_MODES[:-1])} or {LORA_FUSE_MODES[-1]}"),
            "experiment_confirm_cells": (self.experiment_confirm_cells >= 1, "must be at least 1"),
            "max_input_megapixels": (0.01 <= self.max_input_megapixels <= MAX_INPUT_MEGAPIXELS,
                                     f"must be between 0.01 and {MAX_INPUT_MEGAPIXELS:g}"),
            "approx_cache_thresholds": (similarity_table_ok(self.approx_cache_thresholds), "must be 5 similarities from high to low, e.g. 0.95,0.90,0.85,0.75,0.65"),
            "approx_cache_max_mb": (self.approx_cache_max_mb >= 1, "must be at least 1"),
            "approx_cache_ttl_hours": (self.approx_cache_ttl_hours >= 0, "must be 0 (no expiry) or more"),
            "approx_cache_uri": (uri_problem(self.approx_cache_uri) is None,
                                 "must be empty (the embedded faiss index), a Milvus Lite file ending in .db, or a Milvus URI such as http://host:19530"),
            "vae_dtype": (self.vae_dtype in ("auto", "bf16", "fp16", "fp32"), "must be auto, bf16, fp16 or fp32"),
            "device": (self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"), "must be auto, cpu, cuda[:n] or mps"),
        }
        return {name: message for name, (ok, message) in checks.items() if not ok}


def similarity_table_ok(text: str) -> bool:
    """The approximate cache's thresholds: five similarities (for K = 25, 20, 15, 10, 5 of 50), high to low."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        return False
    return len(values) == 5 and values == sorted(values, reverse=True) and all(-1 <= v <= 1 for v in values)


@dataclass(frozen=True)
class SettingInfo:
    label: str
    help: str
    needs_restart: bool = False


# What the Settings tab shows for each field (last_generation is internal and not shown).
SETTING_INFO: dict[str, SettingInfo] = {
    "models_dir": SettingInfo("Models folder", "Where your checkpoints and diffusers folders live."),
    "outputs_dir": SettingInfo("Outputs folder", "Images are saved under <folder>/<date>/."),
    "cache_dir": SettingInfo("Cache folder", "The demo model, model hashes and caches.", needs_restart=True),
    "device": SettingInfo("Device", "auto, cpu, cuda, cuda:1, mps.", needs_restart=True),
    "ram_cache_gb": SettingInfo("RAM cache (GiB)", "Loaded models kept in RAM for fast switching; least recently used leave first."),
    "vram_reserve_gb": SettingInfo("VRAM reserve (GiB)", "GPU memory kept free for activations and the VAE decode.", needs_restart=True),
    "include_hf_cache": SettingInfo("List the Hugging Face cache", "Also list pipelines in ~/.cache/huggingface (read-only, offline)."),
    "allow_pickle": SettingInfo("Allow pickle checkpoints", "Load .ckpt/.pt/.bin files with torch.load(weights_only=True). Off: safetensors only."),
    "preview_every": SettingInfo("Live preview every N steps", "0 turns the preview off."),
    "live_preview": SettingInfo("Live preview kind", "cheap: a fixed latent-to-RGB map, small and free. TAESD: the tiny autoencoder "
                                "(taesd_decoder, taesdxl_decoder or taef1_decoder .safetensors in models/VAE-approx), full size: a few ms "
                                "per preview on a GPU, seconds on a CPU at 512 px. Without its file the preview stays cheap."),
    "max_queue_size": SettingInfo("Maximum queue size", "Requests waiting beyond this are refused.", needs_restart=True),
    "vae_dtype": SettingInfo("Default VAE precision", "auto (bf16 on NVIDIA GPUs of compute capability 8+, else fp32), bf16, fp16 or fp32. The Generate tab starts from this "
                                           "(not from the last-used value); saving a new default here sets it there at once."),
    "vae_tiling": SettingInfo("Always decode in tiles", "Less memory for large images, slightly slower; tiling is also used automatically after an out-of-memory error."),
    "vae_slicing": SettingInfo("Decode a batch one image at a time", "Less peak memory for large batches."),
    "vae_honour_force_upcast": SettingInfo("Honour the VAE's force_upcast", "A VAE whose config says it overflows in fp16 (SDXL's) then decodes in fp32 when fp16 is asked."),
    "prompt_memo_policy": SettingInfo("Prompt memo policy", "Which encoded prompt leaves first when full: lru, lfu, fifo, lifo, random, ttl (10 min).", needs_restart=True),
    "prompt_memo_entries": SettingInfo("Prompt memo entries", "Encoded prompts kept, so repeating a prompt skips the text encoders.", needs_restart=True),
    "latent_cache_entries": SettingInfo("Exact-repeat latent cache entries", "Final latents kept: an exact repeat (same model, prompt, seed, settings) skips denoising. 0 = off.", needs_restart=True),
    "face_memo_entries": SettingInfo("Face embedding memo entries", "ID embeddings kept per set of reference photos: the same photo again skips the face stage.", needs_restart=True),
    "onnx_gpu_mem_limit_mb": SettingInfo("Face detector GPU memory cap (MiB)", "Limit of each onnxruntime CUDA session's arena (grown only as requested); the sessions are closed after each embedding.", needs_restart=True),
    "approx_cache_thresholds": SettingInfo("Approximate cache similarity table", "Cosine similarities above which a new prompt resumes after 25, 20, 15, 10 or 5 of 50 steps of a cached one. Higher: fewer, closer hits.", needs_restart=True),
    "approx_cache_max_mb": SettingInfo("Approximate cache size (MiB)", "Disk budget for kept latents under the cache folder; the least beneficial and least used leave first (LCBFU).", needs_restart=True),
    "approx_cache_ttl_hours": SettingInfo("Approximate cache time-to-live (hours)", "Kept latents older than this are dropped; 0 keeps them until evicted.", needs_restart=True),
    "approx_cache_uri": SettingInfo("Approximate cache store (Milvus URI)", "Empty: the embedded faiss index in the cache folder. ./cache.db: Milvus Lite "
                                    "in that folder (one process). http://host:19530: a Milvus server shared by several workers or machines "
                                    "(pip install -r requirements-scale.txt); the latents stay in the cache folder, which they must all see.", needs_restart=True),
    "vae_sticky_fallback": SettingInfo("Keep fp32 after a NaN fallback", "On: like A1111, the rest of the session decodes in fp32. Off: only the failing sample is re-decoded."),
    "torch_compile": SettingInfo("torch.compile the denoiser", "off, default or max-autotune. The first generation after a model loads "
                                   "compiles (about a minute for SDXL); later ones reuse it. Pays on NVIDIA GPUs; see bench --suite gpu.", needs_restart=True),
    "channels_last": SettingInfo("Channels-last UNet and VAE", "NHWC convolutions: faster on recent NVIDIA GPUs, usually slower on CPUs. "
                                   "Applies to models loaded after the change.", needs_restart=True),
    "lora_fuse": SettingInfo("LoRA fusing", "auto: a LoRA set used again is fused into the weights when that measured faster "
                             "(exact restore after each image); off: never; always: every run."),
    "max_input_megapixels": SettingInfo("Largest input image (megapixels)", "img2img and inpaint images and masks (web UI, command line, "
                                        "A1111 API) above this are refused, from the file's header, before any pixel is decoded. "
                                        "100 takes any camera photo; lower it on a small machine."),
    "experiment_confirm_cells": SettingInfo("Experiment cells without asking", "An experiment grid with more cells asks to confirm first (the CLI needs --yes)."),
}


def coerce_setting(value, default):
    """Turn a JSON value into the field's type; raise ValueError if it cannot be."""
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true/false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"expected a whole number, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"expected text, got {value!r}")
        return value
    if kind is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected an object, got {value!r}")
        return value
    return value


class SettingsStore:
    """Reads and writes one settings file; remembers what went wrong when reading it.

    `overrides` names the fields set for this run only (flag or environment variable -> its name);
    `save` writes the file's own value for them.
    """

    def __init__(self, path: Path = DEFAULT_SETTINGS_FILE):
        self.path = Path(path)
        self.messages: list[str] = []
        self.overrides: dict[str, str] = {}
        self._on_file: dict = {}  # the file's valid values, as loaded or last written
        self._lock = threading.RLock()  # the Generate tab (last values) and the Settings tab may save at once

    def load(self) -> AppSettings:
        self.messages = []
        self._on_file = {}
        defaults = AppSettings()
        remove_stale_temporaries(self.path.parent)  # what a save killed mid-write left behind
        if not self.path.exists():
            return defaults
        try:
            raw = json.loads(self.path.read_text())
            if not isinstance(raw, dict):
                raise ValueError("the file does not hold a JSON object")
        except (OSError, ValueError) as error:
            backup = self._keep_backup()
            self.messages.append(f"The settings file {self.path} could not be read ({error}); it was kept as {backup.name} and the defaults are in use.")
            return defaults
        values = {}
        for item in fields(AppSettings):
            if item.name not in raw:
                continue
            default = getattr(defaults, item.name)
            try:
                values[item.name] = coerce_setting(raw[item.name], default)
            except ValueError as error:
                self.messages.append(f"Setting {item.name!r} ignored: {error}; using the default {default!r}.")
        for name in PATH_FIELDS:
            if name in values:
                values[name] = resolve_path(values[name])
        settings = dataclasses.replace(defaults, **values)
        for name, problem in settings.validate().items():
            self.messages.append(f"Setting {name!r} {problem}; using the default {getattr(defaults, name)!r}.")
            setattr(settings, name, getattr(defaults, name))
            values.pop(name, None)
        self._on_file = values
        return settings

    def save(self, settings: AppSettings) -> None:
        """Write to a temporary file, then rename over the old one: never a half-written file.

        Fields in `overrides` keep the file's value (or stay out of the file): a one-off flag is not saved.
        """
        problems = settings.validate()
        if problems:
            raise ValueError("; ".join(f"{name} {problem}" for name, problem in problems.items()))
        values = dataclasses.asdict(settings)
        for name in self.overrides:
            if name in self._on_file:
                values[name] = self._on_file[name]
            else:
                del values[name]
        text = json.dumps({name: portable_path(value) if name in PATH_FIELDS else value for name, value in values.items()},
                          indent=2, sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            write_text_atomically(self.path, text)  # temporary file, fsync, rename; cleaned up on failure
            self._on_file = values

    def update(self, settings: AppSettings, changes: dict) -> None:
        """Apply the fields the user changed onto the current `settings` and save; all or nothing.

        A changed field stops being an override: the user chose it, so it is written to the file.
        """
        with self._lock:
            candidate = dataclasses.replace(settings, **changes)
            kept = dict(self.overrides)
            for name in changes:
                self.overrides.pop(name, None)
            try:
                self.save(candidate)
            except BaseException:
                self.overrides = kept
                raise
            for name in changes:
                setattr(settings, name, getattr(candidate, name))

    def fall_back_to_default(self, settings: AppSettings, name: str, reason: str) -> bool:
        """The file's value for `name` cannot be used on this machine (e.g. device cuda without CUDA).

        Keep a copy of the file, use and save the default, and say so in `messages`. Returns False,
        changing nothing, when the value came from a flag or environment variable: the caller reports that.
        """
        if name in self.overrides:
            return False
        value, default = getattr(settings, name), getattr(AppSettings(), name)
        backup = self._keep_backup(copy=True)
        setattr(settings, name, default)
        try:
            self.save(settings)
        except OSError as error:
            logging.getLogger("likeness").warning("could not save the settings file: %s", error)
        self.messages.append(f"The settings file {self.path} sets {name} to {value!r}, which cannot be used here ({reason}); "
                             f"started with {default!r} and saved that. The old file was kept as {backup.name}.")
        return True

    def _keep_backup(self, copy: bool = False) -> Path:
        backup = self.path.with_name(f"{self.path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            if copy:
                shutil.copy2(self.path, backup)
            else:
                os.replace(self.path, backup)
        except OSError:
            pass
        return backup


def load_settings(path: Path | None = None, overrides: dict | None = None) -> tuple[AppSettings, SettingsStore]:
    """Settings from the file, then environment variables, then non-None `overrides` (CLI flags)."""
    store = SettingsStore(path or Path(os.environ.get("LIKENESS_SETTINGS", DEFAULT_SETTINGS_FILE)))
    settings = store.load()
    for name, variable in ENVIRONMENT.items():
        if os.environ.get(variable):
            setattr(settings, name, os.environ[variable])
            store.overrides[name] = variable
    for name, value in (overrides or {}).items():
        if value is not None:
            setattr(settings, name, value)
            store.overrides[name] = FLAGS.get(name, name)
    return settings, store
