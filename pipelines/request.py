"""A generation request, its validation per family, and what comes back."""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import asdict, dataclass, field, replace

from PIL import Image

from pipelines.choices import (DEEPCACHE_SCHEDULES, HIRES_SAME_CHECKPOINT, HIRES_SAME_SAMPLER, HIRES_SAME_SCHEDULE, MASKED_CONTENT, REFINER_NONE,
                               RESIZE_MODES, SCHEDULE_TYPES, VAE_CHOICES)
from pipelines.errors import InvalidRequest
from pipelines.families import Family
from pipelines.hooks.flux_block_cache import CHOICES as FLUX_CACHE_CHOICES
from pipelines.lora.tags import LoraSyntaxError, extract_lora_tags
from pipelines.samplers import AUTOMATIC, find_sampler, find_schedule_type, has_sampler, sampler_names, split_sampler_name

MAX_SEED = 2**32 - 1
MAX_STEPS = 150  # A1111's slider limit
MAX_CFG = 30.0
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 100
MAX_CLIP_SKIP = 12  # A1111's slider: CLIP ViT-L/14 has 12 layers
MAX_DEEPCACHE_INTERVAL = 20
MAX_DEEPCACHE_BRANCH = 8
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
    # img2img and inpainting (A1111's img2img payload names). The entry points open and size-check the images.
    init_image: object = None  # PIL image: start from it instead of noise
    mask: object = None  # PIL image (white or painted = repaint); needs init_image
    denoising_strength: float = 0.75  # 0 keeps the init image, 1 ignores it
    resize_mode: str = RESIZE_MODES[0]  # how an init image of another size is fitted
    mask_blur: int = 4  # px, both axes
    inpainting_fill: str = "original"  # masked content: fill | original | latent noise | latent nothing
    inpaint_full_res: bool = False  # "only masked": inpaint a padded crop around the mask at full resolution
    inpaint_full_res_padding: int = 32  # px around the mask for "only masked"
    inpainting_mask_invert: bool = False  # repaint what is NOT painted
    # Hires fix: a second pass at hires_scale x the size (1 = off), as A1111's txt2img "Hires. fix".
    hires_scale: float = 1.0
    hires_upscaler: str = "Latent"  # Latent | Lanczos | Nearest | an ESRGAN file's name in models/ESRGAN
    hires_steps: int = 0  # 0 = the same as steps
    hires_denoising: float = 0.7
    # Face detailer: each detected face re-generated at the model's native size and pasted back.
    face_detail: bool = False
    face_detail_strength: float = 0.4
    face_detail_steps: int = 0  # 0 = the same as steps
    face_detail_prompt: str = ""  # "" = the main prompt
    face_detail_faces: str = ""  # which faces, 1-based, largest first: "1,3"; "" = all
    cache_namespace: str = ""  # whose approximate-cache entries this run may see and add to: the login user or API user; "" = single user
    # A1111's "Clip skip" (CLIP_stop_at_last_layers): the prompt is read from the text encoder's Nth layer from the end
    # (1 = the last). SD 1.5 only, as in A1111: SDXL was trained on its penultimate layers, FLUX.1 on T5. Last in the
    # request so the form's positional API order (parameters before it) stays as it was.
    clip_skip: int = 1
    # A1111's prompt styles by name (styles.csv in the models folder): the manager applies them to the prompt and
    # negative prompt before anything else, and the request it runs has none left.
    styles: tuple = ()
    # A1111's variation seed ("Extra" next to the seed): each image's starting noise is its seed's, turned toward
    # subseed's (the batch's next images: subseed + 1, ...) by subseed_strength (0 = off, 1 = the subseed's noise).
    # SD 1.5 and SDXL text-to-image. -1 = a random subseed, drawn once per run.
    subseed: int = -1
    subseed_strength: float = 0.0
    # A1111's "Tiling": every padded convolution of the UNet and the VAE wraps around (circular padding), so the
    # picture repeats seamlessly (textures). SD 1.5 and SDXL; FLUX.1's transformer has no convolutions to wrap.
    tiling: bool = False
    # A1111's hires fix prompts: what the hires pass reads instead of the prompt / negative prompt ("" = the main one's).
    # Its LoRA tags are not read: the LoRAs of the main prompt stay applied for the whole run.
    hires_prompt: str = ""
    hires_negative_prompt: str = ""
    # A1111's "SD VAE": a VAE file from models/VAE decodes and encodes instead of the model's own (pipelines/vae_files.py);
    # "Automatic" (or "None") = the model's own.
    vae: str = "Automatic"
    # A1111's "Schedule type": how the sampler's noise levels are spaced (pipelines/choices.py SCHEDULE_TYPES).
    # Automatic = the sampler's A1111 default (Karras for DPM++ 2M); validation puts in the one that runs.
    schedule_type: str = "Automatic"
    # A1111's "Hires sampler" and "Hires schedule type": the hires pass's own ("" or A1111's "Use same sampler" / "Use
    # same scheduler" = as the first pass). Validation leaves "" where the hires pass runs as the first one did.
    hires_sampler: str = ""
    hires_schedule_type: str = ""
    # A1111's "Resize seed from width/height" (with the variation seed under "Extra"): each image's starting noise is
    # drawn at this size and put in the middle of the picture's, so a seed keeps its composition at another size
    # (0 = off; both must be set). SD 1.5 and SDXL text-to-image, as the variation seed.
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    # A1111's "Hires checkpoint": another installed model of the same family runs the hires pass (and what follows it:
    # the decode, the face detailer); "" or A1111's "Use same checkpoint" = the first pass's model. The manager runs
    # every batch's first pass, then loads it once (pipelines/stages: a split run).
    hires_checkpoint: str = ""
    # A1111's Refiner: another installed model of the same family takes over the denoise once `refiner_switch_at` of its
    # steps are done (A1111's "switch by sampling steps": 0.8 of 20 steps = 16 on the model, 4 on the refiner) and runs
    # what follows (hires pass, decode, face detailer). "" or "None" = no refiner. A split run, as the hires checkpoint.
    refiner_checkpoint: str = ""
    refiner_switch_at: float = 0.8
    # A1111's "Token merging ratio" (ToMe, the tomesd package): the share of the tokens merged before each self-attention
    # of the UNet's full-resolution blocks, every pass; 0 = off. SD 1.5 and SDXL (pipelines/hooks/token_merging.py).
    token_merging_ratio: float = 0.0

    def to_dict(self) -> dict:
        """JSON-friendly: images as their size and content digest."""
        values = asdict(self)
        for name in IMAGE_FIELDS:
            values[name] = image_summary(getattr(self, name))
        return values

    @property
    def mode(self) -> str:
        """txt2img, img2img or inpaint."""
        return "txt2img" if self.init_image is None else ("inpaint" if self.mask is not None else "img2img")


IMAGE_FIELDS = ("init_image", "mask")
MIN_HIRES_SCALE, MAX_HIRES_SCALE = 1.0, 4.0
MIN_REFINER_SWITCH, MAX_REFINER_SWITCH = 0.01, 1.0  # A1111's Switch at slider
MAX_TOKEN_MERGING = 0.75  # tomesd's most with 2x2 patches: one token of four is a destination, the other three can merge
MAX_MASK_BLUR = 64
MAX_FULL_RES_PADDING = 256


def image_digest(image) -> str | None:
    """A short content hash of a PIL image (cache keys, infotext); None for no image."""
    if image is None:
        return None
    digest = hashlib.sha256(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()[:12]


def image_summary(image) -> dict | None:
    if image is None:
        return None
    if not isinstance(image, Image.Image):
        return {"type": type(image).__name__}
    return {"size": list(image.size), "mode": image.mode, "digest": image_digest(image)}


@dataclass(frozen=True)
class ValidatedRequest:
    request: GenerationRequest
    seed: int  # the real seed, never -1
    warnings: tuple[str, ...] = ()

    def seeds(self) -> list[list[int]]:
        """Seeds per batch, A1111 style: consecutive seeds across the whole run, wrapping past MAX_SEED
        so every recorded seed can be asked for again."""
        return self._consecutive(self.seed)

    def subseeds(self) -> list[list[int | None]]:
        """The variation seeds, laid out as `seeds()` (None throughout when the variation is off)."""
        r = self.request
        return self._consecutive(r.subseed) if r.subseed_strength > 0 else [[None] * r.batch_size for _ in range(r.batch_count)]

    def _consecutive(self, first: int) -> list[list[int]]:
        r = self.request
        return [[seed_after(first, b * r.batch_size + i) for i in range(r.batch_size)] for b in range(r.batch_count)]


def random_seed(rng: random.Random | None = None) -> int:
    """What -1 (a random seed) becomes: one draw over every seed there is."""
    return (rng or random.SystemRandom()).randint(0, MAX_SEED)


def seed_after(first: int, index: int) -> int:
    """The seed `index` images after `first`, wrapping past MAX_SEED so every recorded seed can be asked for again."""
    return (first + index) % (MAX_SEED + 1)


def shown(value, limit: int = 40) -> str:
    """A value as a message shows it: repr, cut short (a 400-digit number or a 1 MB string stays readable)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1000:
        return f"a number of about {int(value.bit_length() * 0.30103):,} digits"  # repr() refuses past 4300 digits
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__: the type is enough
        text = f"a {type(value).__name__} value"
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def text_problem(name: str, value) -> str | None:
    """Why `value` cannot be a prompt: not a string, or not encodable as UTF-8 (lone surrogates, which is
    how Python hands over command-line bytes that are not UTF-8); None when it is fine."""
    if not isinstance(value, str):
        return f"{name} must be text, got {type(value).__name__} {shown(value)}."
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        return (f"{name} has characters that are not valid Unicode text (at position {error.start}: {shown(value[error.start:error.end])}); "
                "it came from bytes that are not UTF-8. Retype it or save the text as UTF-8.")
    return None


def validate_request(request: GenerationRequest, family: Family, rng: random.Random | None = None) -> ValidatedRequest:
    """Check every field against the family's limits; raise InvalidRequest naming all problems.

    Any value of any type in any field gives either a valid request or InvalidRequest, never
    another exception (tests/reliability fuzzes this).
    """
    problems = size_problems(request, family.spec) + number_problems(request)
    warnings: list[str] = []
    if not isinstance(request.sampler, str) or not has_sampler(family, request.sampler):
        problems.append(f"Sampler {shown(request.sampler)} is not available for {family.spec.label}; "
                        f"choose one of: {', '.join(sampler_names(family))}.")
        schedule = hires_sampling = None
    else:
        chosen = chosen_schedule(request.sampler, request.schedule_type, "Schedule type", problems, warnings)
        schedule = runnable_schedule(find_sampler(family, request.sampler), chosen, problems)
        hires_sampling = validate_hires_sampling(request, family, chosen, schedule, problems, warnings)
    variation, variation_notes, strength = validate_variation(request, family)
    resize_problems, resize_notes, seed_resize = validate_seed_resize(request, family)
    hires_problems, hires_notes = validate_hires_size(request, family)
    refiner_problems, refiner_notes, refiner = validate_refiner(request, family)
    problems += refiner_problems
    warnings += refiner_notes
    problems += token_merging_problems(request, family)
    problems += variation + resize_problems + tiling_problems(request, family) + cache_problems(request, family) + \
        text_problems(request) + validate_second_passes(request) + hires_problems
    warnings += variation_notes + resize_notes + hires_notes
    clip_skip = request.clip_skip
    if _is_whole(clip_skip) and 1 < clip_skip <= MAX_CLIP_SKIP and family is not Family.SD15:  # out of range: a problem above
        warnings.append(f"Clip skip {clip_skip} applies to SD 1.5 models only (as in A1111); {family.spec.label} reads its prompt as trained.")
        clip_skip = 1
    approximate = request.approximate_cache
    if request.init_image is not None or request.mask is not None:
        refine_problems, refine_notes = validate_refine(request)
        problems += refine_problems
        warnings += refine_notes
        if approximate is True and request.init_image is not None:
            warnings.append("The approximate cache is off for img2img and inpainting: its kept latents come from text-to-image runs.")
            approximate = False
    refines = bool(refiner) and not refiner_problems and _steps_known(request) and refiner_switch_step(request) is not None
    if approximate is True and refines:
        warnings.append("The approximate cache is off with a refiner: its kept latents come from one model's whole run.")
        approximate = False
    if problems:
        raise InvalidRequest(" ".join(problems))

    prompt, negative = (_cut_prompt(label, text, warnings) for label, text in (("prompt", request.prompt), ("negative prompt", request.negative_prompt)))
    sampler = find_sampler(family, request.sampler).name  # canonical spelling, an old combined name's sampler
    seed = random_seed(rng) if request.seed == -1 else request.seed
    subseed = random_seed(rng) if strength > 0 and request.subseed == -1 else request.subseed
    cleaned = replace(request, prompt=prompt, negative_prompt=negative, sampler=sampler, schedule_type=schedule,
                      hires_sampler=hires_sampling[0], hires_schedule_type=hires_sampling[1],
                      approximate_cache=approximate, clip_skip=clip_skip, refiner_checkpoint=refiner, refiner_switch_at=float(request.refiner_switch_at),
                      hires_checkpoint="" if second_checkpoint(request) is None or (refines and second_checkpoint(request) == refiner)
                      else request.hires_checkpoint,
                      subseed=subseed, subseed_strength=float(strength), seed_resize_from_w=seed_resize[0], seed_resize_from_h=seed_resize[1])
    return ValidatedRequest(cleaned, seed, tuple(warnings))


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _whole_number_problem(name: str, value, low: int, high: int) -> list[str]:
    if not _is_whole(value):
        return [f"{name} must be a whole number, got {shown(value)}."]
    if not low <= value <= high:
        return [f"{name} must be between {low} and {high}, got {shown(value)}."]
    return []


def _is_choice(value, choices) -> bool:
    return isinstance(value, str) and value in choices


def size_problems(request: GenerationRequest, spec) -> list[str]:
    """Width and height: whole, a multiple of the family's size step, within its range (a nearer size suggested)."""
    problems = []
    for name, value in (("Width", request.width), ("Height", request.height)):
        if not _is_whole(value):
            problems.append(f"{name} must be a whole number, got {shown(value)}.")
        elif not 0 < value <= 1_000_000:  # before the arithmetic below: its message would suggest a size from a huge one
            problems.append(f"{name} {shown(value)} is outside {spec.min_size}-{spec.max_size}, the range {spec.label} supports.")
        elif value % spec.size_multiple:
            nearest = max(spec.min_size, round(value / spec.size_multiple) * spec.size_multiple)
            problems.append(
                f"{name} {value} is not a multiple of {spec.size_multiple} ({spec.label} needs multiples of "
                f"{spec.size_multiple}); try {nearest}."
            )
        elif not spec.min_size <= value <= spec.max_size:
            problems.append(f"{name} {value} is outside {spec.min_size}-{spec.max_size}, the range {spec.label} supports.")
    return problems


def number_problems(request: GenerationRequest) -> list[str]:
    """Steps, batch size and count, CFG scale, seed, clip skip."""
    problems = (_whole_number_problem("Steps", request.steps, 1, MAX_STEPS)
                + _whole_number_problem("Batch size", request.batch_size, 1, MAX_BATCH_SIZE)
                + _whole_number_problem("Batch count", request.batch_count, 1, MAX_BATCH_COUNT))
    if not isinstance(request.cfg_scale, (int, float)) or isinstance(request.cfg_scale, bool):
        problems.append(f"CFG scale must be a number, got {shown(request.cfg_scale)}.")
    elif not 0 <= request.cfg_scale <= MAX_CFG or request.cfg_scale != request.cfg_scale:  # NaN fails both
        problems.append(f"CFG scale must be between 0 and {MAX_CFG:g}, got {shown(request.cfg_scale)}.")
    if not _is_whole(request.seed):
        problems.append(f"Seed must be a whole number (-1 for random), got {shown(request.seed)}.")
    elif not -1 <= request.seed <= MAX_SEED:
        problems.append(f"Seed must be -1 (random) or between 0 and {MAX_SEED}, got {shown(request.seed)}.")
    return problems + _whole_number_problem("Clip skip", request.clip_skip, 1, MAX_CLIP_SKIP)


def cache_problems(request: GenerationRequest, family: Family) -> list[str]:
    """DeepCache (UNet families, 2 steps or more), the FLUX block caches and their threshold, the approximate cache."""
    problems = (_whole_number_problem("DeepCache interval", request.deepcache_interval, 1, MAX_DEEPCACHE_INTERVAL)
                + _whole_number_problem("DeepCache branch", request.deepcache_branch, 0, MAX_DEEPCACHE_BRANCH))
    if not _is_choice(request.deepcache_schedule, DEEPCACHE_SCHEDULES):
        problems.append(f"DeepCache schedule must be {' or '.join(DEEPCACHE_SCHEDULES)}, got {shown(request.deepcache_schedule)}.")
    if _is_whole(request.deepcache_interval) and request.deepcache_interval > 1:
        if family is Family.FLUX:
            problems.append("DeepCache works on UNet models (SD 1.5, SDXL); FLUX.1 uses the block caches instead.")
        elif _is_whole(request.steps) and request.steps < 2:  # checked here, before the model loads
            problems.append(f"DeepCache (N = {request.deepcache_interval}) needs at least 2 steps; use more steps or set N to 1 (off).")
    if not _is_choice(request.flux_cache, FLUX_CACHE_CHOICES):
        problems.append(f"FLUX block cache must be {', '.join(FLUX_CACHE_CHOICES[:-1])} or {FLUX_CACHE_CHOICES[-1]}, got {shown(request.flux_cache)}.")
    elif request.flux_cache != "off" and family is not Family.FLUX:
        problems.append("The FLUX block caches work on FLUX.1 models; use DeepCache for SD 1.5 and SDXL.")
    threshold = request.flux_cache_threshold
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 < threshold < 1:  # NaN fails too
        problems.append(f"The block cache threshold must be between 0 and 1, got {shown(threshold)}.")
    if not isinstance(request.approximate_cache, bool):
        problems.append(f"Approximate cache must be true or false, got {shown(request.approximate_cache)}.")
    return problems


def text_problems(request: GenerationRequest) -> list[str]:
    """The prompts (their LoRA tags too), the VAE and styles names, the save flag, the VAE dtype, the cache namespace."""
    problems = []
    if not isinstance(request.vae, str) or not request.vae.strip():
        problems.append(f"VAE must be a VAE's name (or Automatic), got {shown(request.vae)}.")
    if not is_name_list(request.styles):
        problems.append(f"Styles must be a list of style names, got {shown(request.styles)}.")
    if not isinstance(request.save, bool):
        problems.append(f"Save must be true or false, got {shown(request.save)}.")
    if not _is_choice(request.vae_dtype, VAE_CHOICES):
        problems.append(f"VAE dtype must be one of {', '.join(VAE_CHOICES)}, got {shown(request.vae_dtype)}.")
    for name, text in (("The prompt", request.prompt), ("The negative prompt", request.negative_prompt)):
        if problem := text_problem(name, text):
            problems.append(problem)
    if isinstance(request.prompt, str):
        try:
            extract_lora_tags(request.prompt)  # `<lora:name:weight>`: the weight a number within +-10
        except LoraSyntaxError as error:
            problems.append(str(error))
    if not isinstance(request.hires_checkpoint, str) or len(request.hires_checkpoint) > 1000:
        problems.append(f"The hires checkpoint must be a model's name (or \"{HIRES_SAME_CHECKPOINT}\"), got {shown(request.hires_checkpoint)}.")
    if not isinstance(request.cache_namespace, str) or len(request.cache_namespace) > 256:
        problems.append(f"The cache namespace must be text of at most 256 characters, got {shown(request.cache_namespace)}.")
    return problems


def _cut_prompt(label: str, text: str, warnings: list[str]) -> str:
    """A prompt beyond MAX_PROMPT_CHARS is cut there, with a warning."""
    if len(text) <= MAX_PROMPT_CHARS:
        return text
    warnings.append(f"The {label} was {len(text):,} characters; only the first {MAX_PROMPT_CHARS:,} are used.")
    return text[:MAX_PROMPT_CHARS]


def validate_variation(request: GenerationRequest, family: Family) -> tuple[list[str], list[str], float]:
    """The variation seed's fields: (problems, notes, the strength that runs)."""
    problems, notes = [], []
    subseed, strength = request.subseed, request.subseed_strength
    if not isinstance(subseed, int) or isinstance(subseed, bool) or not -1 <= subseed <= MAX_SEED:
        problems.append(f"Variation seed must be -1 (random) or between 0 and {MAX_SEED}, got {shown(subseed)}.")
    if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not 0 <= strength <= 1:  # NaN fails too
        problems.append(f"Variation seed strength must be between 0 and 1, got {shown(strength)}.")
        return problems, notes, 0.0
    return problems, notes, float(strength)


def validate_seed_resize(request: GenerationRequest, family: Family) -> tuple[list[str], list[str], tuple[int, int]]:
    """A1111's "Resize seed from": (problems, notes, the (width, height) that runs; (0, 0) = off). Off unless both are
    set (A1111 reads -1 or 0 as off), and when it is the picture's own size."""
    problems, notes = [], []
    sizes = (request.seed_resize_from_w, request.seed_resize_from_h)
    for name, value in zip(("width", "height"), sizes):
        if not isinstance(value, int) or isinstance(value, bool) or not -1 <= value <= family.spec.max_size:
            problems.append(f"Resize seed from {name} must be 0 (off) or a size up to {family.spec.max_size}, got {shown(value)}.")
    if problems or min(sizes) <= 0 or sizes == (request.width, request.height):
        return problems, notes, (0, 0)
    return problems, notes, sizes


def is_name_list(value) -> bool:
    """A list or tuple of names (styles): text alone is one name spelt out, not a list."""
    return isinstance(value, (list, tuple)) and all(isinstance(name, str) for name in value)


def token_merging_problems(request, family: Family) -> list[str]:
    ratio = request.token_merging_ratio
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 <= ratio <= MAX_TOKEN_MERGING:  # NaN fails too
        return [f"Token merging ratio must be between 0 (off) and {MAX_TOKEN_MERGING:g}, got {shown(ratio)}."]
    if ratio > 0 and family is Family.FLUX:
        return ["Token merging works on SD 1.5 and SDXL (it merges the tokens of the UNet's transformer blocks); FLUX.1's "
                "transformer has none of them. Set Token merging ratio to 0 for FLUX.1 models."]
    return []


def tiling_problems(request, family: Family) -> list[str]:
    if not isinstance(request.tiling, bool):
        return [f"Tiling must be true or false, got {shown(request.tiling)}."]
    if request.tiling and family is Family.FLUX:
        return ["Tiling works on SD 1.5 and SDXL (it wraps the UNet's and the VAE's convolutions around); FLUX.1's transformer has no "
                "convolutions to wrap. Turn Tiling off for FLUX.1 models."]
    return []


def conditioning_key(request) -> tuple:
    """What, beyond the prompt words, changes a request's text conditioning, for every cache key made of the prompt
    (prompt memo, exact repeat, approximate partitions): empty at the defaults, so entries made before stay valid."""
    return (("clip skip", request.clip_skip),) if request.clip_skip > 1 else ()


def validate_second_passes(request: GenerationRequest) -> list[str]:
    """Hires fix and face detailer fields (the upscaler's name is checked against the files at run time)."""
    problems: list[str] = []

    def number(name: str, value, low: float, high: float) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:  # NaN fails too
            problems.append(f"{name} must be between {low:g} and {high:g}, got {shown(value)}.")

    def steps(name: str, value) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_STEPS:
            problems.append(f"{name} must be a whole number from 0 (the same as Steps) to {MAX_STEPS}, got {shown(value)}.")

    number("Hires scale", request.hires_scale, MIN_HIRES_SCALE, MAX_HIRES_SCALE)
    number("Hires denoising strength", request.hires_denoising, 0, 1)
    steps("Hires steps", request.hires_steps)
    if not isinstance(request.hires_upscaler, str) or not request.hires_upscaler.strip():
        problems.append(f"Hires upscaler must be a name (Latent, Lanczos, Nearest or an ESRGAN model), got {shown(request.hires_upscaler)}.")
    if not isinstance(request.face_detail, bool):
        problems.append(f"Face detailer must be true or false, got {shown(request.face_detail)}.")
    number("Face detailer strength", request.face_detail_strength, 0, 1)
    steps("Face detailer steps", request.face_detail_steps)
    for name, value in (("The hires prompt", request.hires_prompt), ("The hires negative prompt", request.hires_negative_prompt)):
        if problem := text_problem(name, value):
            problems.append(problem)
    if problem := text_problem("The face detailer prompt", request.face_detail_prompt):
        problems.append(problem)
    faces = request.face_detail_faces
    if not isinstance(faces, str) or not all(part.strip().isdigit() and int(part) >= 1 for part in faces.split(",") if faces.strip()):
        problems.append(f"Face detailer faces must be numbers from 1 separated by commas (\"1,3\"; empty for all), got {shown(faces)}.")
    return problems


def hires_size(width: int, height: int, scale: float, multiple: int) -> tuple[int, int]:
    """Hires fix's second-pass size: A1111's `int(size * scale)`, down to the family's size multiple (A1111
    upscales the latents to `size // 8`, so its picture ends on the multiple as well)."""
    return int(width * scale + 1e-6) // multiple * multiple, int(height * scale + 1e-6) // multiple * multiple


def second_checkpoint(request: GenerationRequest) -> str | None:
    """The model the hires pass runs on when it is not the first pass's (hires fix on, another name), else None."""
    name = request.hires_checkpoint
    if not hires_on(request) or name in ("", HIRES_SAME_CHECKPOINT, request.model):
        return None
    return name


def starts_from_init_image(request: GenerationRequest) -> bool:
    """img2img at strength 1 is text-to-image (A1111 keeps a trace of the image there; "1 ignores it"
    is what the slider promises); inpainting always starts from the image (the unmasked part is kept)."""
    return request.init_image is not None and (request.mask is not None or request.denoising_strength < 1)


def first_pass_steps(request: GenerationRequest) -> int:
    """The steps the first pass's denoise runs: all of them for text-to-image; img2img's and inpainting's are A1111's
    and diffusers' `int(steps * strength)`."""
    if starts_from_init_image(request):
        return min(int(request.steps * request.denoising_strength), request.steps)
    return request.steps


def refiner_name(request: GenerationRequest) -> str | None:
    """The refiner's model name when one is asked for (another model than the request's), else None."""
    name = request.refiner_checkpoint
    if not isinstance(name, str) or name.strip() in ("", REFINER_NONE) or name == request.model:
        return None
    return name


def refiner_switch_step(request: GenerationRequest) -> int | None:
    """The step of the full schedule after which the refiner takes over (A1111's switch by sampling steps: the first step
    whose share of the steps run reaches "Switch at"); None without a refiner or when it would run no step. An img2img
    run's steps count from the ones its strength skips."""
    if refiner_name(request) is None:
        return None
    run = first_pass_steps(request)
    on_model = math.ceil(request.refiner_switch_at * run - 1e-9)  # 0.8 of 20: 16, however 0.8 * 20 rounds
    return request.steps - run + on_model if on_model < run else None


def validate_refiner(request: GenerationRequest, family: Family) -> tuple[list[str], list[str], str]:
    """(problems, notes, the refiner's name or ""): the fields' types, then what a refiner cannot run with. Whether the
    model is installed and of the family is the manager's check, before anything loads."""
    name, switch_at = request.refiner_checkpoint, request.refiner_switch_at
    problems = [] if isinstance(name, str) and len(name) <= 1000 else [f"The refiner checkpoint must be a model's name (or \"{REFINER_NONE}\"), got {shown(name)}."]
    if not isinstance(switch_at, (int, float)) or isinstance(switch_at, bool) or not MIN_REFINER_SWITCH <= switch_at <= MAX_REFINER_SWITCH:
        problems.append(f"Refiner switch at must be between {MIN_REFINER_SWITCH:g} and {MAX_REFINER_SWITCH:g} (the share of the steps on "
                        f"the model before the refiner takes over), got {shown(switch_at)}.")
    if problems or refiner_name(request) is None:
        return problems, [], ""
    if request.mask is not None:
        problems.append("The refiner works with text-to-image and img2img, not inpainting (its masked denoise stays on one model): "
                        f"set the refiner to {REFINER_NONE}.")
    if isinstance(request.sampler, str) and has_sampler(family, request.sampler) and find_sampler(family, request.sampler).model_calls > 1:
        problems.append(f"The refiner cannot take over from {find_sampler(family, request.sampler).name} mid-way (a second-order sampler "
                        "keeps half a step in its own state): choose another sampler, or no refiner.")
    hires_model = second_checkpoint(request)
    if hires_model is not None and hires_model != name:
        problems.append(f"With a refiner the hires pass runs on the refiner ({name!r}), as in A1111: set the hires checkpoint to "
                        f"\"{HIRES_SAME_CHECKPOINT}\" or to the refiner.")
    if problems or not _steps_known(request):
        return problems, [], name
    if refiner_switch_step(request) is None:  # still checked as installed (as A1111): a typo is not silently a model
        return [], [f"Refiner switch at {switch_at:g} of {first_pass_steps(request)} steps leaves the refiner no step: it was not used."], name
    return [], [], name


def _steps_known(request: GenerationRequest) -> bool:
    """Steps (and an img2img's strength) are valid numbers (number_problems says when not), so steps can be counted."""
    strength = request.denoising_strength
    strength_ok = request.init_image is None or (isinstance(strength, (int, float)) and not isinstance(strength, bool) and 0 <= strength <= 1)
    return _is_whole(request.steps) and 1 <= request.steps <= MAX_STEPS and strength_ok


def hires_on(request: GenerationRequest) -> bool:
    """Hires fix is a text-to-image second pass (as in A1111): a scale above 1 and no init image."""
    scale = request.hires_scale
    return isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 1 and request.init_image is None


def validate_hires_size(request: GenerationRequest, family: Family) -> tuple[list[str], list[str]]:
    """(problems, notes): the hires target within the family's size range, checked before the model loads."""
    scale, width, height = request.hires_scale, request.width, request.height
    if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and MIN_HIRES_SCALE < scale <= MAX_HIRES_SCALE):
        return [], []  # off, or already refused by validate_second_passes
    if request.init_image is not None:
        return [], ["Hires fix is a second pass of text-to-image (as in A1111); it is off for img2img and inpainting."]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1_000_000 for v in (width, height)):
        return [], []  # the size itself is refused above
    spec = family.spec
    target = hires_size(width, height, scale, spec.size_multiple)
    if max(target) <= spec.max_size:
        return [], []
    largest = int(spec.max_size / max(width, height) * 100) / 100
    return [f"Hires fix at {scale:g}x makes {target[0]}x{target[1]}; {spec.label} supports up to {spec.max_size} px a side: "
            f"lower the Hires scale to at most {largest:g}, or the size."], []


def face_numbers(text: str) -> list[int]:
    """'1, 3' -> [1, 3] (validated already); '' -> [] (all faces)."""
    return sorted({int(part) for part in text.split(",") if part.strip()})


def validate_refine(request: GenerationRequest) -> tuple[list[str], list[str]]:
    """img2img / inpaint fields: (problems, notes). The images must already be PIL images (the UI, the CLI
    and the API open them with pipelines.images.open_image, which checks the size before decoding)."""
    problems: list[str] = []
    notes: list[str] = []
    init, mask = request.init_image, request.mask
    if init is None:
        problems.append("A mask needs an init image to paint on: give the image as well (init_image).")
    elif not isinstance(init, Image.Image):
        problems.append(f"The init image must be an image, got {type(init).__name__} {shown(init)}.")
    if mask is not None and not isinstance(mask, Image.Image):
        problems.append(f"The mask must be an image, got {type(mask).__name__} {shown(mask)}.")
    strength = request.denoising_strength
    if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not 0 <= strength <= 1:  # NaN fails too
        problems.append(f"Denoising strength must be between 0 and 1, got {shown(strength)}.")
    if not (isinstance(request.resize_mode, str) and request.resize_mode in RESIZE_MODES):
        problems.append(f"Resize mode must be one of {', '.join(RESIZE_MODES)}, got {shown(request.resize_mode)}.")
    if not (isinstance(request.inpainting_fill, str) and request.inpainting_fill in MASKED_CONTENT):
        problems.append(f"Masked content must be one of {', '.join(MASKED_CONTENT)}, got {shown(request.inpainting_fill)}.")
    for name, value, high in (("Mask blur", request.mask_blur, MAX_MASK_BLUR), ("Only-masked padding", request.inpaint_full_res_padding, MAX_FULL_RES_PADDING)):
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{name} must be a whole number, got {shown(value)}.")
        elif not 0 <= value <= high:
            problems.append(f"{name} must be between 0 and {high}, got {shown(value)}.")
    for name, value in (("Only masked", request.inpaint_full_res), ("Invert mask", request.inpainting_mask_invert)):
        if not isinstance(value, bool):
            problems.append(f"{name} must be true or false, got {shown(value)}.")
    if isinstance(init, Image.Image) and isinstance(mask, Image.Image) and isinstance(request.inpainting_mask_invert, bool):
        from pipelines.refine.masks import check_mask  # here, not above: it imports torch, and the CLI parser imports this module

        try:
            notes += check_mask(mask, init.size, invert=request.inpainting_mask_invert)
        except InvalidRequest as error:
            problems.append(str(error))
    return problems, notes


def chosen_schedule(sampler_name: str, schedule_type, what: str, problems: list[str], warnings: list[str]) -> str | None:
    """The schedule type asked for, by label or A1111's name; an old combined sampler name ("DPM++ 2M Karras") brings
    its own, which wins over another, as in A1111. None after adding a problem."""
    chosen = find_schedule_type(schedule_type)
    if chosen is None:
        problems.append(f"{what} must be one of: {', '.join(SCHEDULE_TYPES)}; got {shown(schedule_type)}.")
        return None
    _base, from_name = split_sampler_name(sampler_name)
    if from_name is not None:
        if chosen not in (AUTOMATIC, from_name):
            warnings.append(f"Sampler {sampler_name} names its schedule type; {from_name} was used, not {chosen}.")
        chosen = from_name
    return chosen


def runnable_schedule(sampler, chosen: str | None, problems: list[str], what: str = "Schedule type") -> str | None:
    """The schedule type that runs (Automatic made the sampler's default), or None after adding a problem."""
    if chosen is None:
        return None
    if chosen not in sampler.schedules:
        problems.append(f"{what} {chosen} is not available with {sampler.name} (diffusers' scheduler for it has no such "
                        f"spacing); choose one of: {', '.join(sampler.schedules)}.")
        return None
    return sampler.resolve(chosen)


def validate_hires_sampling(request: GenerationRequest, family: Family, first_chosen: str | None, first_schedule: str | None,
                            problems: list[str], warnings: list[str]) -> tuple[str, str]:
    """Hires fix's own sampler and schedule type: ("", "") where the hires pass runs as the first one, else the
    sampler's name ("" for the same) and the schedule type that runs ("" for the first pass's). "Use same scheduler"
    with another sampler is the first pass's choice (Automatic: the hires sampler's own default); one that sampler
    cannot run becomes Automatic, with a note."""
    if not hires_on(request):  # read only with hires fix on, as A1111 reads hr_sampler_name only with enable_hr
        return "", ""
    asked_sampler, asked_schedule = request.hires_sampler, request.hires_schedule_type
    same_sampler = asked_sampler in ("", HIRES_SAME_SAMPLER)
    same_schedule = asked_schedule in ("", HIRES_SAME_SCHEDULE)
    if not same_sampler and not (isinstance(asked_sampler, str) and has_sampler(family, asked_sampler)):
        problems.append(f"Hires sampler {shown(asked_sampler)} is not available for {family.spec.label}; choose \"{HIRES_SAME_SAMPLER}\" "
                        f"or one of: {', '.join(sampler_names(family))}.")
        return "", ""
    if first_chosen is None or first_schedule is None:  # the first pass's sampling is refused already
        return "", ""
    sampler = find_sampler(family, request.sampler if same_sampler else asked_sampler)
    if same_schedule:
        _base, from_name = ("", None) if same_sampler else split_sampler_name(asked_sampler)
        chosen = from_name or first_chosen
        if chosen not in sampler.schedules:
            warnings.append(f"Hires fix: {sampler.name} has no {chosen} schedule type; it runs {AUTOMATIC}.")
            chosen = AUTOMATIC
    else:
        chosen = chosen_schedule(asked_sampler if not same_sampler else "", asked_schedule, "Hires schedule type", problems, warnings)
    schedule = runnable_schedule(sampler, chosen, problems, "Hires schedule type")
    if schedule is None:
        return "", ""
    first_sampler = find_sampler(family, request.sampler).name
    return ("" if sampler.name == first_sampler else sampler.name), ("" if schedule == first_schedule else schedule)


@dataclass
class GeneratedImage:
    image: object  # PIL.Image.Image
    seed: int
    infotext: str
    path: str | None = None
    before_detail: object = None  # PIL.Image.Image before the face detailer re-drew its faces (the UI's before/after); None: not detailed


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
    kept_latents: object = None  # manager.KeptLatents of the last batch: re-decode them with another VAE dtype
    stage_details: dict = field(default_factory=dict)  # a stage's note: "loaded from RAM", "prompt editing: 2 prompts (...)"

    @property
    def seeds(self) -> list[int]:
        return [img.seed for img in self.images]

    def denoise_summary(self) -> str:
        """'20 steps at 0.123 s/step (8.13 it/s)'; an exact repeat, whose denoise the latent cache skipped,
        says so instead of '0 steps at 0.000 s/step' (the readout, the CLI and the API's info)."""
        skipped = str(self.cache_notes.get("latent cache", "")).startswith("hit")
        steps = self.step_seconds
        if not steps:
            return "denoise skipped (exact repeat)" if skipped else "no denoise steps"
        mean = sum(steps) / len(steps)
        text = f"{len(steps)} step{'s' if len(steps) != 1 else ''} at {mean:.3f} s/step ({1 / mean if mean else 0:.2f} it/s)"
        return text + ("; other batches skipped the denoise (exact repeat)" if skipped else "")

    def summary(self) -> dict:
        """A JSON-friendly view (the CLI's --json output and the API's)."""
        return {
            "images": [img.path for img in self.images],
            "seeds": self.seeds,
            "infotexts": [img.infotext for img in self.images],
            "stage_seconds": {k: round(v, 4) for k, v in self.stage_seconds.items()},
            "stage_details": self.stage_details,
            "step_seconds": [round(s, 4) for s in self.step_seconds],
            "denoise": self.denoise_summary(),
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
