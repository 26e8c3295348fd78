"""A generation request, its validation per family, and what comes back."""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace

from pipelines.errors import InvalidRequest
from pipelines.families import Family
from pipelines.samplers import find_sampler, sampler_names
from pipelines.vae import VAE_CHOICES

MAX_SEED = 2**32 - 1
MAX_STEPS = 150  # A1111's slider limit
MAX_CFG = 30.0
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 100
MAX_PROMPT_CHARS = 4000  # far beyond what any text encoder reads; keeps infotext and logs sane


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = -1
    width: int = 512
    height: int = 512
    sampler: str = "Euler a"
    batch_size: int = 1
    batch_count: int = 1
    vae_dtype: str = "auto"  # auto | bf16 | fp16 | fp32
    deepcache_interval: int = 1  # DeepCache N (UNet models): 1 = off
    deepcache_branch: int = 0
    deepcache_schedule: str = "uniform"  # uniform | quadratic
    flux_cache: str = "off"  # FLUX.1 block cache: off | first-block | taylorseer | magcache
    flux_cache_threshold: float = 0.08
    approximate_cache: bool = False  # resume from a similar earlier prompt's latents: faster, not exact
    save: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ValidatedRequest:
    request: GenerationRequest
    seed: int  # the real seed, never -1
    warnings: tuple[str, ...] = ()

    def seeds(self) -> list[list[int]]:
        """Seeds per batch, A1111 style: consecutive seeds across the whole run, wrapping past MAX_SEED
        so every recorded seed can be asked for again."""
        r = self.request
        return [[(self.seed + b * r.batch_size + i) % (MAX_SEED + 1) for i in range(r.batch_size)] for b in range(r.batch_count)]


def validate_request(request: GenerationRequest, family: Family, rng: random.Random | None = None) -> ValidatedRequest:
    """Check every field against the family's limits; raise InvalidRequest naming all problems."""
    spec = family.spec
    problems: list[str] = []
    warnings: list[str] = []

    def whole_number(name: str, value, low: int, high: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{name} must be a whole number, got {value!r}.")
        elif not low <= value <= high:
            problems.append(f"{name} must be between {low} and {high}, got {value}.")

    for name, value in (("Width", request.width), ("Height", request.height)):
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{name} must be a whole number, got {value!r}.")
            continue
        if value % spec.size_multiple:
            nearest = max(spec.min_size, round(value / spec.size_multiple) * spec.size_multiple)
            problems.append(
                f"{name} {value} is not a multiple of {spec.size_multiple} ({spec.label} needs multiples of "
                f"{spec.size_multiple}); try {nearest}."
            )
        elif not spec.min_size <= value <= spec.max_size:
            problems.append(f"{name} {value} is outside {spec.min_size}-{spec.max_size}, the range {spec.label} supports.")
    whole_number("Steps", request.steps, 1, MAX_STEPS)
    whole_number("Batch size", request.batch_size, 1, MAX_BATCH_SIZE)
    whole_number("Batch count", request.batch_count, 1, MAX_BATCH_COUNT)
    if not isinstance(request.cfg_scale, (int, float)) or isinstance(request.cfg_scale, bool):
        problems.append(f"CFG scale must be a number, got {request.cfg_scale!r}.")
    elif not 0 <= request.cfg_scale <= MAX_CFG or request.cfg_scale != request.cfg_scale:
        problems.append(f"CFG scale must be between 0 and {MAX_CFG:g}, got {request.cfg_scale}.")
    if not isinstance(request.seed, int) or isinstance(request.seed, bool):
        problems.append(f"Seed must be a whole number (-1 for random), got {request.seed!r}.")
    elif not -1 <= request.seed <= MAX_SEED:
        problems.append(f"Seed must be -1 (random) or between 0 and {MAX_SEED}, got {request.seed}.")
    try:
        find_sampler(family, str(request.sampler))
    except KeyError:
        problems.append(f"Sampler {request.sampler!r} is not available for {spec.label}; choose one of: {', '.join(sampler_names(family))}.")
    whole_number("DeepCache interval", request.deepcache_interval, 1, 20)
    whole_number("DeepCache branch", request.deepcache_branch, 0, 8)
    if request.deepcache_schedule not in ("uniform", "quadratic"):
        problems.append(f"DeepCache schedule must be uniform or quadratic, got {request.deepcache_schedule!r}.")
    if request.deepcache_interval not in (1, None) and family is Family.FLUX:
        problems.append("DeepCache works on UNet models (SD 1.5, SDXL); FLUX.1 uses the block caches instead.")
    if request.flux_cache not in ("off", "first-block", "taylorseer", "magcache"):
        problems.append(f"FLUX block cache must be off, first-block, taylorseer or magcache, got {request.flux_cache!r}.")
    elif request.flux_cache != "off" and family is not Family.FLUX:
        problems.append("The FLUX block caches work on FLUX.1 models; use DeepCache for SD 1.5 and SDXL.")
    if not isinstance(request.flux_cache_threshold, (int, float)) or not 0 < request.flux_cache_threshold < 1:
        problems.append(f"The block cache threshold must be between 0 and 1, got {request.flux_cache_threshold!r}.")
    if not isinstance(request.approximate_cache, bool):
        problems.append(f"Approximate cache must be true or false, got {request.approximate_cache!r}.")
    if request.vae_dtype not in VAE_CHOICES:
        problems.append(f"VAE dtype must be one of {', '.join(VAE_CHOICES)}, got {request.vae_dtype!r}.")
    if not isinstance(request.prompt, str) or not isinstance(request.negative_prompt, str):
        problems.append("Prompt and negative prompt must be text.")
    if problems:
        raise InvalidRequest(" ".join(problems))

    prompt, negative = request.prompt, request.negative_prompt
    if len(prompt) > MAX_PROMPT_CHARS:
        warnings.append(f"The prompt was {len(prompt):,} characters; only the first {MAX_PROMPT_CHARS:,} are used.")
        prompt = prompt[:MAX_PROMPT_CHARS]
    if len(negative) > MAX_PROMPT_CHARS:
        warnings.append(f"The negative prompt was {len(negative):,} characters; only the first {MAX_PROMPT_CHARS:,} are used.")
        negative = negative[:MAX_PROMPT_CHARS]
    sampler = find_sampler(family, request.sampler).name  # canonical spelling
    seed = request.seed
    if seed == -1:
        seed = (rng or random.SystemRandom()).randint(0, MAX_SEED)
    cleaned = replace(request, prompt=prompt, negative_prompt=negative, sampler=sampler)
    return ValidatedRequest(cleaned, seed, tuple(warnings))


@dataclass
class GeneratedImage:
    image: object  # PIL.Image.Image
    seed: int
    infotext: str
    path: str | None = None


@dataclass
class GenerationResult:
    images: list[GeneratedImage]
    request: GenerationRequest
    stage_seconds: dict[str, float]
    step_seconds: list[float]
    total_seconds: float
    peak_memory_bytes: int | None
    memory_kind: str  # "GPU allocator peak" or "process RSS"
    device: str
    denoiser_dtype: str
    vae_dtype: str
    warnings: list[str] = field(default_factory=list)
    cache_notes: dict = field(default_factory=dict)  # e.g. {"prompt memo": "hit", "latent cache": "miss"}
    hook_stats: dict = field(default_factory=dict)  # e.g. {"deepcache": {"full_steps": 7, "cached_steps": 13}}

    @property
    def seeds(self) -> list[int]:
        return [img.seed for img in self.images]

    def summary(self) -> dict:
        """A JSON-friendly view (the CLI's --json output and the API's)."""
        return {
            "images": [img.path for img in self.images],
            "seeds": self.seeds,
            "infotexts": [img.infotext for img in self.images],
            "stage_seconds": {k: round(v, 4) for k, v in self.stage_seconds.items()},
            "step_seconds": [round(s, 4) for s in self.step_seconds],
            "total_seconds": round(self.total_seconds, 4),
            "peak_memory_bytes": self.peak_memory_bytes,
            "memory_kind": self.memory_kind,
            "device": self.device,
            "denoiser_dtype": self.denoiser_dtype,
            "vae_dtype": self.vae_dtype,
            "warnings": self.warnings,
            "caches": self.cache_notes,
            "hooks": self.hook_stats,
            "request": self.request.to_dict(),
        }
