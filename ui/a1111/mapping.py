"""From an A1111 txt2img body to Likeness's GenerationRequest (+ FaceOptions), and from the result back
to A1111's response: base64 PNGs with the infotext inside and the `info` JSON string.

Likeness-only features travel in A1111's own extension point, `alwayson_scripts`:

    "alwayson_scripts": {
      "pulid":     {"args": [[<base64 photo>, ...], 0.8, 0, 20, "v2", 1.0, 1]},   # or {"args": [{"images": [...], "id_weight": 0.8}]}
                   # id_weight left out or null: the model family's official default (SDXL 0.8, FLUX.1 1.0)
      "deepcache": {"args": [3, 0, "uniform"]},                                  # N, branch, schedule
      "flux block cache": {"args": ["first-block", 0.08]},
      "approximate cache": {"args": [true]},
      "vae precision": {"args": ["fp32"]}
    }

A leading `true`/`false` in an `args` list is read as "enabled", as many A1111 extensions take it.
Fields Likeness does not support are accepted and named in `info.warnings`; values it cannot honour
(an unknown sampler or model, out-of-range numbers, a photo that is not an image) raise InvalidRequest.
"""
from __future__ import annotations

import base64
import binascii
import html
import io
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from pipelines.batch import picture_batch_runs
from pipelines.catalog import ModelEntry
from pipelines.errors import InvalidRequest, ModelNotFound
from pipelines.face.options import MAX_PHOTOS, FaceOptions
from pipelines.families import Family
from pipelines.images import MAX_PHOTO_PIXELS, open_image, open_input_image
from pipelines.infotext import MODEL_TITLE, parse_infotext
from pipelines.outputs import png_with_parameters
from pipelines.prompt_lines import check_requests, line_requests, parse_lines
from pipelines.request import GenerationRequest, GenerationResult, shown
from pipelines.choices import HIRES_SAME_CHECKPOINT, HIRES_SAME_SAMPLER, HIRES_SAME_SCHEDULE, REFINER_NONE, SCHEDULE_TYPES
from pipelines.samplers import AUTOMATIC, find_sampler, find_schedule_type, sampler_names, samplers_for, split_sampler_name
from pipelines.vae import VAE_CHOICES
from pipelines.vae_files import VAE_AUTOMATIC, find_vae
from pipelines.extras import UpscaleRequest, UpscaleResult
from ui.a1111.models import Img2ImgRequest, Txt2ImgRequest, _ExtrasBase
from ui.refine_options import find_upscaler, masked_content_name, resize_mode_name

# A1111's schedulers (modules/sd_schedulers.py, its 1.10 release): name -> label. Likeness runs all of them
# (pipelines/choices.py's SCHEDULE_TYPES), and FLUX.1's flow-match Euler is written as "simple".
A1111_SCHEDULERS = {
    "automatic": "Automatic", "uniform": "Uniform", "karras": "Karras", "exponential": "Exponential",
    "polyexponential": "Polyexponential", "sgm_uniform": "SGM Uniform", "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps", "simple": "Simple", "normal": "Normal", "ddim": "DDIM", "beta": "Beta",
}
# Likeness's samplers by A1111's sampler name, with A1111's aliases.
SAMPLER_ALIASES = {
    "Euler a": ["k_euler_a", "k_euler_ancestral"],
    "Euler": ["k_euler"],
    "DPM++ 2M": ["k_dpmpp_2m"],
    "DPM++ 2M SDE": ["k_dpmpp_2m_sde"],
    "DPM++ 3M SDE": ["k_dpmpp_3m_sde"],
    "DPM++ SDE": ["k_dpmpp_sde"],
    "Heun": ["k_heun"],
    "DPM2": ["k_dpm_2"],
    "DPM2 a": ["k_dpm_2_a"],
    "LMS": ["k_lms"],
    "DDIM": ["ddim"],
    "UniPC": ["unipc"],
    "LCM": ["k_lcm"],
}
SCRIPT_NAMES = {
    "pulid": "pulid", "face": "pulid", "face reference": "pulid",
    "deepcache": "deepcache",
    "flux block cache": "flux_cache", "flux_cache": "flux_cache", "block cache": "flux_cache", "flux cache": "flux_cache",
    "approximate cache": "approximate_cache", "approximate_cache": "approximate_cache", "approx cache": "approximate_cache",
    "vae precision": "vae_precision", "vae_precision": "vae_precision", "vae dtype": "vae_precision",
    "adetailer": "adetailer", "after detailer": "adetailer",  # ADetailer's own format, run by the face detailer
    "refiner": "refiner",  # A1111's built-in Refiner script: [enabled, checkpoint, switch at], as the body's refiner fields
}
# ADetailer's defaults (its adetailer/args.py) for the unit fields the face detailer takes.
ADETAILER_STRENGTH = 0.4
# ADetailer unit fields with no counterpart here: named in a warning when a unit turns them on.
ADETAILER_UNUSED_SWITCHES = ("ad_use_inpaint_width_height", "ad_use_cfg_scale", "ad_use_checkpoint", "ad_use_vae", "ad_use_sampler",
                             "ad_use_noise_multiplier", "ad_use_clip_skip", "ad_restore_face")
# Fields whose A1111 default is all Likeness does: another value is accepted and warned about.
UNSUPPORTED_DEFAULTS = {
    # The sampler options: None or A1111's option defaults (clients such as webuiapi always send those).
    "restore_faces": (None, False), "eta": (None, 1.0, 0.0), "s_min_uncond": (None, 0.0), "s_churn": (None, 0.0),
    "s_tmax": (None, 0.0), "s_tmin": (None, 0.0), "s_noise": (None, 1.0),
    "firstpass_image": (None, ""), "script_args": ([],), "infotext": (None, ""),
    # img2img: instruct-pix2pix's image CFG (webuiapi sends 1.5), A1111's mask rounding, the noise multiplier.
    "image_cfg_scale": (None, 1.0, 1.5), "mask_round": (True,), "initial_noise_multiplier": (None, 1.0), "latent_mask": (None, ""),
}
# Hires fix fields Likeness runs with the first pass's own: another value is warned about (with enable_hr only).
HIRES_SAME_AS_FIRST = {"firstphase_width": (0,), "firstphase_height": (0,)}
LATENT_RESIZE = 3  # A1111's img2img resize_mode 3, "Just resize (latent upscale)"
PULID_KEYS = ("images", "id_weight", "start_step", "num_zero", "ortho", "true_cfg", "true_cfg_start", "face_index")


@dataclass
class ApiDefaults:
    """What A1111 keeps in its options and Likeness keeps for API callers: the model and VAE precision
    used when a request does not say (POST /options changes them, for this server's run)."""

    model: str
    vae_dtype: str = "auto"
    clip_skip: int = 1  # A1111's CLIP_stop_at_last_layers
    vae: str = VAE_AUTOMATIC  # A1111's sd_vae: Automatic or a file of models/VAE
    token_merging_ratio: float = 0.0  # A1111's token_merging_ratio (0 = off)


@dataclass
class Prepared:
    """A checked txt2img body, ready to run."""

    request: GenerationRequest
    photos: list[bytes] = field(default_factory=list)  # decoded and checked; written to a temp folder only to run
    face: FaceOptions | None = None  # without photos: the route adds their paths
    warnings: list[str] = field(default_factory=list)
    keep_model: bool = False  # override_settings_restore_afterwards=false with sd_model_checkpoint: it stays the default
    keep_vae: bool = False
    keep_clip_skip: bool = False
    keep_sd_vae: bool = False
    keep_token_merging: bool = False
    lines: list = field(default_factory=list)  # "Prompts from file or textbox": one request per line (the first is `request`)
    # Several init_images (decoded): `lines` holds a run per picture and batch; A1111 reports their number as the batch size
    init_pictures: list = field(default_factory=list)


# -- models -----------------------------------------------------------------------------------------

def cached_sha256(entry: ModelEntry, cache_file: Path) -> str | None:
    """The file's sha256 if Likeness already computed it (pipelines/hashes.py's cache); never hashes now."""
    try:
        if not entry.path.is_file():
            return None
        stat = entry.path.stat()
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return None
    value = known.get(f"{entry.path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}") if isinstance(known, dict) else None
    return value if isinstance(value, str) else None


def model_item(entry: ModelEntry, cache_file: Path) -> dict:
    """One `sd-models` row: A1111's title is `name [short hash]` when the hash is known."""
    sha = cached_sha256(entry, cache_file)
    short = sha[:10] if sha else None
    return {"title": f"{entry.name} [{short}]" if short else entry.name, "model_name": entry.name, "hash": short,
            "sha256": sha, "filename": str(entry.path), "config": None}


def find_model(manager, text) -> str:
    """A model name from what A1111 clients send: the title (`name [hash]`), the name, the file name
    with its extension, or the hash. Rescans the models folder once before giving up (as A1111 does)."""
    if not isinstance(text, str) or not text.strip():
        raise ModelNotFound(f"sd_model_checkpoint must be a model name or title (text), got {shown(text)}.")
    for attempt in range(2):
        found = _match_model(manager, text.strip())
        if found:
            return found
        if attempt == 0:
            manager.refresh()
    names = ", ".join(e.name for e in manager.models() if e.usable) or "none"
    raise ModelNotFound(f"No model {shown(text, 80)}. Available: {names} (GET /sdapi/v1/sd-models lists their titles).")


def _match_model(manager, text: str) -> str | None:
    entries = [e for e in manager.models() if e.usable]
    cache_file = Path(manager.config.cache_dir) / "hashes.json"
    wanted, digest = text, None
    title = MODEL_TITLE.match(text)
    if title:
        wanted, digest = title.group("name"), title.group("hash").lower()
    stems = {wanted, re.sub(r"\.(safetensors|ckpt|pt|bin)$", "", wanted, flags=re.IGNORECASE)}
    for entry in entries:
        if entry.name in stems or Path(entry.name).name in stems:
            return entry.name
    if re.fullmatch(r"[0-9a-fA-F]{8,64}", text):
        digest = text.lower()
    if digest:
        for entry in entries:
            sha = cached_sha256(entry, cache_file)
            if sha and sha.startswith(digest):
                return entry.name
    return None


# -- samplers ---------------------------------------------------------------------------------------

def scheduler_key(text) -> str | None:
    """A1111's scheduler name from a name or label ("Karras", "karras"); None when it is not one."""
    if not isinstance(text, str):
        return None
    ours = find_schedule_type(text)  # ours by label or A1111's name and aliases ("SGMUniform")
    return scheduler_name(ours) if ours is not None else None


def scheduler_name(label: str) -> str:
    """A1111's name for a schedule type's label: "SGM Uniform" -> "sgm_uniform"."""
    return next(name for name, known in A1111_SCHEDULERS.items() if known == label)


def sampler_items() -> list[dict]:
    """/sdapi/v1/samplers: A1111's names and aliases; `options.scheduler` is what Automatic runs (as A1111 lists it)."""
    defaults = {s.name: s.default_schedule for s in samplers_for(Family.SD15)}
    return [{"name": name, "aliases": aliases,
             "options": {"scheduler": scheduler_name(defaults[name])} if defaults.get(name, AUTOMATIC) != AUTOMATIC else {}}
            for name, aliases in SAMPLER_ALIASES.items()]


def scheduler_items() -> list[dict]:
    """/sdapi/v1/schedulers: the schedule types Likeness runs (A1111's all), in A1111's fields."""
    rho = {"karras": 7.0, "polyexponential": 1.0}
    # A1111's need_inner_model: made from the model's own table of noise levels, not only its range.
    inner = {"uniform", "sgm_uniform", "simple", "normal", "ddim", "beta"}
    names = [scheduler_name(label) for label in SCHEDULE_TYPES]
    return [{"name": name, "label": A1111_SCHEDULERS[name], "aliases": ["SGMUniform"] if name == "sgm_uniform" else None,
             "default_rho": rho.get(name, -1.0), "need_inner_model": name in inner} for name in names]


def resolve_sampler(family: Family, sampler, scheduler, warnings: list[str]) -> tuple[str, str]:
    """Likeness's sampler and schedule type for A1111's `sampler_name` (+ `scheduler`); InvalidRequest for a sampler it
    does not have. A schedule type its sampler cannot step through here (Karras with DDIM or LCM) runs as Automatic, with a
    warning."""
    if not isinstance(sampler, str):
        raise InvalidRequest(f"sampler_name must be text, got {shown(sampler)}.")
    name = sampler.strip()
    for ours, aliases in SAMPLER_ALIASES.items():  # k_euler_a -> Euler a
        if name.lower() in aliases:
            name = ours
    wanted = "automatic"
    if scheduler not in (None, ""):
        wanted = scheduler_key(scheduler)
        if wanted is None:
            raise InvalidRequest(f"Unknown scheduler {shown(scheduler)}; use one of: {', '.join(A1111_SCHEDULERS.values())}.")
    base, from_name = split_sampler_name(name)  # the old combined name ("DPM++ 2M Karras"), still accepted by A1111
    if from_name is not None:
        name, wanted = base, from_name.lower()
    if family is Family.FLUX:
        if name.lower() not in ("euler", "flow euler"):
            known = name in SAMPLER_ALIASES or name.lower() in (n.lower() for n in sampler_names(Family.SD15))
            if not known:
                raise InvalidRequest(f"Sampler {shown(name)} not found; FLUX.1 models run Euler (flow matching).")
            warnings.append(f"FLUX.1 models run Euler (flow matching) in Likeness; sampler {name} was replaced by it.")
        if wanted not in ("automatic", "simple"):
            warnings.append(f"FLUX.1 models run their own schedule (Simple) in Likeness; scheduler {scheduler} was not used.")
        return "Flow Euler", AUTOMATIC
    try:
        found = find_sampler(family, name)
    except KeyError:
        raise InvalidRequest(f"Sampler {shown(name)} not found; Likeness has: {', '.join(SAMPLER_ALIASES)} "
                             f"(with the scheduler {', '.join(SCHEDULE_TYPES)}).") from None
    schedule = find_schedule_type(wanted)  # A1111's every name is one of ours
    if schedule not in found.schedules:
        warnings.append(f"Schedule type {schedule} is not available with {found.name} in Likeness; Automatic was used.")
        schedule = AUTOMATIC
    return found.name, schedule


# -- images -----------------------------------------------------------------------------------------

def decode_base64(text, what: str) -> bytes:
    """The bytes of a base64 string or `data:...;base64,` URL; InvalidRequest naming `what` otherwise."""
    if not isinstance(text, str):
        raise InvalidRequest(f"{what} must be a base64 string, got {type(text).__name__}.")
    if text.startswith(("http://", "https://")):
        raise InvalidRequest(f"{what}: Likeness does not fetch images from URLs; send the image itself as base64.")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{what} is not valid base64.") from None
    if not data:
        raise InvalidRequest(f"{what} is empty.")
    return data


def decode_image(text, what: str, max_pixels: int = MAX_PHOTO_PIXELS) -> tuple[bytes, Image.Image]:
    """Base64 (optionally a `data:image/...;base64,` URL) -> the bytes and the decoded image, checked:
    its size is read from the header and refused before any pixel is decoded."""
    data = decode_base64(text, what)
    image = open_image(data, max_pixels=max_pixels, what=what)
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise InvalidRequest(f"{what} is damaged or incomplete and cannot be read ({error}).") from None
    return data, image


def decode_input_image(text, what: str, max_pixels: int) -> Image.Image:
    """An img2img init image or mask from base64: refused from its header above `max_pixels` (the setting named)."""
    return open_input_image(decode_base64(text, what), max_pixels, what)


def encode_png(image: Image.Image, infotext: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_with_parameters(image, infotext))
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def image_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# -- the body ---------------------------------------------------------------------------------------

def prepare(body: Txt2ImgRequest | Img2ImgRequest, manager, defaults: ApiDefaults) -> Prepared:
    """Check the body and build the request; InvalidRequest/ModelNotFound with every reason found.
    An img2img body's images are decoded here, header first, against the max_input_megapixels setting."""
    warnings = [f"Unknown field {name!r} was ignored." for name in body.extras()]
    for name, allowed in UNSUPPORTED_DEFAULTS.items():
        if name not in type(body).model_fields:
            continue
        value = getattr(body, name)
        if value not in allowed:
            warnings.append(f"{name}={shown(value)} is not supported by Likeness and was ignored.")
    lines_script = selected_script(body)
    if isinstance(body.negative_prompt, str) and "<lora:" in body.negative_prompt:
        warnings.append("LoRA tags in the negative prompt are not applied (as in A1111, LoRAs come from the prompt).")

    prepared = Prepared(GenerationRequest(model=defaults.model, prompt=""), warnings=warnings)
    model, vae_dtype, clip_skip, vae = defaults.model, defaults.vae_dtype, defaults.clip_skip, defaults.vae
    token_merging = defaults.token_merging_ratio
    overrides = body.override_settings or {}
    for key, value in overrides.items():
        if key == "sd_model_checkpoint":
            model = find_model(manager, value)
            prepared.keep_model = not body.override_settings_restore_afterwards
        elif key in ("likeness_vae_dtype", "vae_dtype"):
            if value not in VAE_CHOICES:
                raise InvalidRequest(f"override_settings.{key} must be one of {', '.join(VAE_CHOICES)}, got {shown(value)}.")
            vae_dtype = value
            prepared.keep_vae = not body.override_settings_restore_afterwards
        elif key == "sd_vae":
            vae = api_vae(manager, value, f"override_settings.{key}")
            prepared.keep_sd_vae = not body.override_settings_restore_afterwards
        elif key == "CLIP_stop_at_last_layers" and value is not None:
            clip_skip = value  # the request's check names a value that is not 1-12
            prepared.keep_clip_skip = not body.override_settings_restore_afterwards
        elif key == "token_merging_ratio" and value is not None:
            token_merging = value  # the request's check names a value out of range
            prepared.keep_token_merging = not body.override_settings_restore_afterwards
        elif key == "samples_format" and isinstance(value, str) and value.lower() == "png":
            pass
        else:
            warnings.append(f"override_settings.{key}={shown(value)} is not a Likeness option and was ignored.")
    if model not in {e.name for e in manager.models()}:  # the remembered default was removed from the folder
        model = find_model(manager, model)
    entry = manager.entry(model)
    family = entry.family or Family.SD15
    sampler, schedule_type = resolve_sampler(family, body.sampler_name or body.sampler_index or "Euler", body.scheduler, warnings)

    fields: dict = {}
    for raw_name, script in (body.alwayson_scripts or {}).items():
        name = SCRIPT_NAMES.get(raw_name.strip().lower()) if isinstance(raw_name, str) else None
        if name is None:
            raise InvalidRequest(f"always on script {shown(raw_name)} not found; Likeness has: pulid, deepcache, "
                                 "flux block cache, approximate cache, vae precision, ADetailer (its face models), Refiner.")
        args, enabled = script_args(raw_name, script)
        if not enabled:
            continue
        if name == "pulid":
            prepared.photos, prepared.face = pulid_options(args)
        elif name == "deepcache":
            fields |= positional(raw_name, args, ("deepcache_interval", "deepcache_branch", "deepcache_schedule"),
                                 {"n": "deepcache_interval", "interval": "deepcache_interval", "branch": "deepcache_branch",
                                  "schedule": "deepcache_schedule"})
        elif name == "flux_cache":
            fields |= positional(raw_name, args, ("flux_cache", "flux_cache_threshold"), {"mode": "flux_cache", "threshold": "flux_cache_threshold"})
        elif name == "approximate_cache":
            fields["approximate_cache"] = bool_arg(raw_name, args[0] if args else True)
        elif name == "vae_precision":
            values = positional(raw_name, args, ("vae_dtype",), {"dtype": "vae_dtype", "precision": "vae_dtype"})
            vae_dtype = values.get("vae_dtype", vae_dtype)
        elif name == "adetailer":
            fields |= adetailer_fields(args, warnings)
        elif name == "refiner":
            refiner = positional(raw_name, args, ("checkpoint", "switch_at"), {"checkpoint": "checkpoint", "switch_at": "switch_at"})
            fields |= refiner_fields(manager, refiner.get("checkpoint"), refiner.get("switch_at"), f"alwayson_scripts.{raw_name}")

    prepared.request = GenerationRequest(
        model=model, prompt=body.prompt, negative_prompt=body.negative_prompt, steps=body.steps, cfg_scale=body.cfg_scale,
        seed=body.seed, width=body.width, height=body.height, sampler=sampler, schedule_type=schedule_type, batch_size=body.batch_size,
        batch_count=body.n_iter, vae_dtype=vae_dtype, save=bool(body.save_images), clip_skip=clip_skip,
        styles=tuple(body.styles) if isinstance(body.styles, list) else (body.styles or ()),
        subseed=-1 if body.subseed is None else body.subseed, subseed_strength=body.subseed_strength or 0.0,
        # A1111's -1 (its default) is off, as 0 is here
        seed_resize_from_w=max(body.seed_resize_from_w, 0) if isinstance(body.seed_resize_from_w, int) else body.seed_resize_from_w,
        seed_resize_from_h=max(body.seed_resize_from_h, 0) if isinstance(body.seed_resize_from_h, int) else body.seed_resize_from_h,
        tiling=False if body.tiling is None else body.tiling, vae=vae, token_merging_ratio=token_merging,
    )
    fields |= detailer_fields(body, warnings)
    if "refiner_checkpoint" not in fields:  # the Refiner script's args win over the body's fields, as in A1111
        fields |= refiner_fields(manager, body.refiner_checkpoint, body.refiner_switch_at, "refiner_checkpoint")
    pictures = []
    if isinstance(body, Img2ImgRequest):
        pictures = init_pictures(body, manager.config.max_input_pixels)
        fields |= img2img_fields(body, pictures[0], manager, warnings)
    else:
        fields |= hires_fields(body, manager, warnings) | hires_sampling(body, family, sampler, warnings)
    prepared.request = replace(prepared.request, **fields)
    if lines_script is not None:
        prepared.lines = script_lines(prepared.request, lines_script, manager)
        prepared.request = prepared.lines[0]
    if len(pictures) > 1:  # each init image one image of the batch, as A1111: a run per picture and batch
        prepared.lines = [run for one in prepared.lines or [prepared.request] for run in picture_batch_runs(one, pictures)]
        prepared.request, prepared.init_pictures = prepared.lines[0], pictures
    return prepared


def refiner_fields(manager, checkpoint, switch_at, where: str) -> dict:
    """A1111's refiner: the checkpoint as sd_model_checkpoint takes it (title, name, file name or hash; None, "" or
    "None" = no refiner) and its Switch at (None = A1111's 0.8; the request's check gives the range)."""
    if checkpoint in (None, "", REFINER_NONE):
        return {}
    try:
        name = find_model(manager, checkpoint)
    except ModelNotFound as error:
        raise InvalidRequest(f"{where}: {str(error).replace('sd_model_checkpoint', 'the refiner')}") from None
    return {"refiner_checkpoint": name} | ({"refiner_switch_at": switch_at} if switch_at is not None else {})


PROMPT_LINES_SCRIPT = "prompts from file or textbox"


def selected_script(body) -> list | None:
    """A1111's `script_name`: its "Prompts from file or textbox" (its args); anything else is refused with what there is."""
    name = body.script_name
    if name in (None, ""):
        return None
    if not isinstance(name, str) or name.strip().lower() != PROMPT_LINES_SCRIPT:
        raise InvalidRequest(f"Script {shown(name)} not found: Likeness has \"Prompts from file or textbox\" (its extras are "
                             "alwayson_scripts: pulid, deepcache, flux block cache, approximate cache, vae precision, ADetailer).")
    return list(body.script_args or [])


def script_lines(base: GenerationRequest, args: list, manager) -> list[GenerationRequest]:
    """A1111's script_args [iterate seed, same random seed, (1.10: prompt position,) list text] -> each line's request,
    every one checked as the engine will before the first runs."""
    if len(args) not in (3, 4) or not isinstance(args[-1], str) or not all(isinstance(flag, bool) for flag in args[:2]):
        raise InvalidRequest("Prompts from file or textbox takes script_args [iterate_seed (bool), same_random_seed (bool), "
                             "\"start\" or \"end\" (optional), the list text], got " + shown(args) + ".")
    position = args[2] if len(args) == 4 else "start"
    lines = parse_lines(args[-1])
    requests = []
    for line, one in zip(lines, line_requests(base, lines, args[0], args[1], position)):
        try:  # a line's --sd_model: a title, name or hash
            requests.append(replace(one, model=find_model(manager, one.model)))
        except ModelNotFound as error:
            raise InvalidRequest(f"Line {line.number}: {error}") from None
    check_requests(lines, requests, lambda name: manager.entry(name).family)
    return requests


def init_pictures(body: Img2ImgRequest, limit: int) -> list:
    """A1111's init_images decoded and size-checked, each named by its index when it is not a picture."""
    images = body.init_images
    if not isinstance(images, list) or not images:
        raise InvalidRequest("img2img needs init_images: a list of base64 images (the pictures to start from; "
                             "several: one per image of the batch).")
    return [decode_input_image(image, f"init_images[{index}]", limit) for index, image in enumerate(images)]


def img2img_fields(body: Img2ImgRequest, picture, manager, warnings: list[str]) -> dict:
    """A1111's img2img / inpaint fields -> GenerationRequest's (the mask decoded and size-checked)."""
    limit = manager.config.max_input_pixels
    fields = {"init_image": picture, "denoising_strength": body.denoising_strength}
    mode = body.resize_mode
    if mode == LATENT_RESIZE:
        warnings.append("resize_mode 3 (Just resize, latent upscale) runs as 0 (Just resize): Likeness resizes the picture, not its latents.")
        mode = 0
    fields["resize_mode"] = resize_mode_name(mode)
    if body.mask in (None, ""):
        return fields
    fields["mask"] = decode_input_image(body.mask, "mask", limit)
    if body.mask_blur is not None:
        blur = body.mask_blur
    else:
        blur = max(body.mask_blur_x, body.mask_blur_y)
        if body.mask_blur_x != body.mask_blur_y:
            warnings.append(f"mask_blur_x={body.mask_blur_x} and mask_blur_y={body.mask_blur_y}: Likeness blurs both axes alike, by {blur}.")
    if body.inpainting_mask_invert not in (0, 1):
        raise InvalidRequest(f"inpainting_mask_invert must be 0 (inpaint masked) or 1 (inpaint not masked), got {shown(body.inpainting_mask_invert)}.")
    fields.update(mask_blur=blur, inpainting_fill=masked_content_name(body.inpainting_fill), inpaint_full_res=bool(body.inpaint_full_res),
                  inpaint_full_res_padding=body.inpaint_full_res_padding, inpainting_mask_invert=bool(body.inpainting_mask_invert))
    return fields


def hires_fields(body: Txt2ImgRequest, manager, warnings: list[str]) -> dict:
    """A1111's Hires. fix (`enable_hr`) -> hires_*; txt2img's denoising_strength is the second pass's, as in A1111."""
    if not body.enable_hr:
        return {}
    scale = body.hr_scale
    sizes = [(target, size, name) for target, size, name in ((body.hr_resize_x, body.width, "hr_resize_x"),
                                                              (body.hr_resize_y, body.height, "hr_resize_y")) if target]
    if sizes:  # "Resize width/height to" wins over hr_scale, as in A1111; Likeness scales both sides by one factor
        if any(size <= 0 or target < 0 for target, size, _ in sizes):
            raise InvalidRequest(f"{sizes[0][2]} must be a positive size and the first pass's size positive, got {sizes[0][0]} for {sizes[0][1]}.")
        scales = [target / size for target, size, _ in sizes]
        if len(scales) == 2 and abs(scales[0] - scales[1]) > 0.01 * max(scales):
            raise InvalidRequest(f"hr_resize_x={body.hr_resize_x} and hr_resize_y={body.hr_resize_y} scale {body.width}x{body.height} by "
                                 f"{scales[0]:.3g} and {scales[1]:.3g}; Likeness scales both sides by one factor: give one of them, or hr_scale.")
        scale = max(scales)
    upscaler, note = find_upscaler(manager.config.models_dir, body.hr_upscaler or "Latent", manager.config.allow_pickle)
    if note:
        warnings.append(note)
    for name, allowed in HIRES_SAME_AS_FIRST.items():
        if getattr(body, name) not in allowed:
            warnings.append(f"{name}={shown(getattr(body, name))}: Likeness's hires pass uses the first pass's; ignored.")
    checkpoint = body.hr_checkpoint_name
    if checkpoint not in (None, "", HIRES_SAME_CHECKPOINT):  # a title, name, file name or hash, as sd_model_checkpoint
        try:
            checkpoint = find_model(manager, checkpoint)
        except ModelNotFound as error:
            raise InvalidRequest(f"hr_checkpoint_name: {error}") from None
    fields = {"hires_scale": scale, "hires_upscaler": upscaler, "hires_steps": body.hr_second_pass_steps, "hires_checkpoint": checkpoint or "",
              # A1111 sends the main prompts when the hires ones are empty: the same text is "the main prompt" here too.
              "hires_prompt": "" if body.hr_prompt == body.prompt else body.hr_prompt,
              "hires_negative_prompt": "" if body.hr_negative_prompt == body.negative_prompt else body.hr_negative_prompt}
    if body.denoising_strength is not None:
        fields["hires_denoising"] = body.denoising_strength
    return fields


def hires_sampling(body: Txt2ImgRequest, family: Family, first_sampler: str, warnings: list[str]) -> dict:
    """A1111's `hr_sampler_name` and `hr_scheduler` -> hires_sampler / hires_schedule_type ("Use same ..." or none: the
    first pass's). As for the first pass, a scheduler Likeness lacks, or the hires sampler cannot run, is the first
    pass's, with a warning; an unknown sampler is refused."""
    if not body.enable_hr:
        return {}
    same_sampler = body.hr_sampler_name in (None, "", HIRES_SAME_SAMPLER)
    same_schedule = body.hr_scheduler in (None, "", HIRES_SAME_SCHEDULE)
    if same_sampler and same_schedule:
        return {}
    hires_notes: list[str] = []
    try:
        sampler, schedule = resolve_sampler(family, first_sampler if same_sampler else body.hr_sampler_name,
                                            None if same_schedule else body.hr_scheduler, hires_notes)
    except InvalidRequest as error:
        raise InvalidRequest(f"Hires fix (hr_sampler_name / hr_scheduler): {error}") from None
    warnings += [f"Hires fix: {note}" for note in hires_notes]
    named_schedule = not same_schedule or (not same_sampler and split_sampler_name(body.hr_sampler_name.strip())[1] is not None)
    return {"hires_sampler": "" if same_sampler else sampler, "hires_schedule_type": schedule if named_schedule else ""}


def detailer_fields(body, warnings: list[str]) -> dict:
    """Likeness's face detailer fields (top level of the body) -> GenerationRequest's."""
    sent = [name for name in ("face_detail_strength", "face_detail_steps", "face_detail_prompt", "face_detail_faces")
            if name in body.model_fields_set]
    if not body.face_detail:
        if sent:
            warnings.append(f"{', '.join(sent)} ignored: face_detail is false.")
        return {}
    faces = body.face_detail_faces
    if isinstance(faces, list):
        if not all(isinstance(n, int) and n >= 1 for n in faces):
            raise InvalidRequest(f"face_detail_faces must be face numbers from 1 (1 = the largest), got {shown(faces)}.")
        faces = ",".join(str(n) for n in faces)
    fields = {"face_detail": True, "face_detail_steps": body.face_detail_steps, "face_detail_prompt": body.face_detail_prompt,
              "face_detail_faces": faces}
    if body.face_detail_strength is not None:
        fields["face_detail_strength"] = body.face_detail_strength
    return fields


def adetailer_fields(args: list, warnings: list[str]) -> dict:
    """ADetailer's `alwayson_scripts` args (after its enable flag: an optional skip-img2img flag, then one object per
    unit) -> the face detailer's fields. Its face models run as the detailer (insightface finds the faces; 1 = the
    largest, as its `ad_mask_k_largest` counts); other models (hands, people) and the unit switches the detailer has no
    counterpart for are named in the warnings."""
    if args and isinstance(args[0], bool):  # ADetailer's skip_img2img: the img2img itself is never skipped here
        if args[0]:
            warnings.append("ADetailer skip_img2img is not supported: the img2img runs, then the detailer.")
        args = args[1:]
    if not all(isinstance(unit, dict) for unit in args):
        raise InvalidRequest(f"alwayson_scripts.ADetailer takes [enable, skip_img2img, unit objects...], got {shown(args)}.")
    units = [unit for unit in args if unit.get("ad_tab_enable", True) and str(unit.get("ad_model", "None")) != "None"]
    faces = [unit for unit in units if "face" in str(unit.get("ad_model")).lower()]
    for unit in units:
        if unit not in faces:
            warnings.append(f"ADetailer model {unit.get('ad_model')!r} is not available: Likeness's detailer redraws faces only.")
    if not faces:
        return {}
    unit = faces[0]
    if len(faces) > 1:
        warnings.append(f"ADetailer: {len(faces)} face units given; the first runs ({unit.get('ad_model')}).")
    switched_on = [key for key in ADETAILER_UNUSED_SWITCHES if unit.get(key) is True]
    if unit.get("ad_negative_prompt"):
        switched_on.append("ad_negative_prompt")
    if switched_on:
        warnings.append(f"ADetailer {', '.join(switched_on)} not used: the detailer runs with the generation's own settings.")
    prompt, strength = unit.get("ad_prompt", ""), unit.get("ad_denoising_strength", ADETAILER_STRENGTH)
    largest = unit.get("ad_mask_k_largest", 0)
    if isinstance(largest, bool) or not isinstance(largest, int) or largest < 0:
        raise InvalidRequest(f"ADetailer ad_mask_k_largest must be a whole number from 0 (all faces), got {shown(largest)}.")
    fields = {"face_detail": True, "face_detail_prompt": prompt, "face_detail_strength": strength,
              "face_detail_faces": ",".join(str(n) for n in range(1, largest + 1))}
    if unit.get("ad_use_steps") is True:
        fields["face_detail_steps"] = unit.get("ad_steps")
    return fields  # the request checks each value (a strength of 2, a prompt that is not text) and names it


def script_args(name, script) -> tuple[list, bool]:
    """`{"args": [...]}` -> (args without a leading enabled flag, enabled)."""
    if not isinstance(script, dict) or not isinstance(script.get("args", []), list):
        raise InvalidRequest(f"alwayson_scripts.{name} must be an object with an \"args\" list, got {shown(script)}.")
    args = list(script.get("args", []))
    if args and isinstance(args[0], bool):
        return args[1:], args[0]
    return args, True


def positional(script: str, args: list, names: tuple[str, ...], keys: dict[str, str]) -> dict:
    """Args given in order, or as one object with named keys -> GenerationRequest fields."""
    if len(args) == 1 and isinstance(args[0], dict):
        values = {}
        for key, value in args[0].items():
            field_name = keys.get(key) or (key if key in names else None)
            if field_name is None:
                raise InvalidRequest(f"alwayson_scripts.{script}: unknown argument {shown(key)}; it takes {', '.join(keys)}.")
            values[field_name] = value
        return values
    if len(args) > len(names):
        raise InvalidRequest(f"alwayson_scripts.{script} takes at most {len(names)} args ({', '.join(names)}), got {len(args)}.")
    return dict(zip(names, args))


def bool_arg(script: str, value) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"alwayson_scripts.{script} takes true or false, got {shown(value)}.")
    return value


def pulid_options(args: list) -> tuple[list[bytes], FaceOptions]:
    """The face reference: photos (base64) and PuLID's controls, in order or as one object."""
    if len(args) == 1 and isinstance(args[0], dict):
        values = dict(args[0])
        unknown = sorted(set(values) - set(PULID_KEYS) - {"enabled"})
        if unknown:
            raise InvalidRequest(f"alwayson_scripts.pulid: unknown argument(s) {', '.join(map(repr, unknown))}; it takes {', '.join(PULID_KEYS)}.")
    else:
        if len(args) > len(PULID_KEYS):
            raise InvalidRequest(f"alwayson_scripts.pulid takes at most {len(PULID_KEYS)} args ({', '.join(PULID_KEYS)}), got {len(args)}.")
        values = dict(zip(PULID_KEYS, args))
    images = values.get("images", [])
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not 1 <= len(images) <= MAX_PHOTOS:
        got = f"{len(images)}" if isinstance(images, list) else shown(images)
        raise InvalidRequest(f"alwayson_scripts.pulid needs 1 to {MAX_PHOTOS} photos (base64 strings), got {got}.")
    photos = [decode_image(text, f"alwayson_scripts.pulid photo {i + 1}")[0] for i, text in enumerate(images)]

    def number(key: str, default, kind):
        value = values.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and int(value) != value) or value != value:
            raise InvalidRequest(f"alwayson_scripts.pulid {key} must be a {'whole ' if kind is int else ''}number, got {shown(value)}.")
        return kind(value)

    face_index = values.get("face_index", [])
    if isinstance(face_index, int) and not isinstance(face_index, bool):
        face_index = [face_index]
    if not isinstance(face_index, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in face_index):
        raise InvalidRequest(f"alwayson_scripts.pulid face_index must be a list of face numbers (0 = the largest face), got {shown(face_index)}.")
    ortho = values.get("ortho", "v2")
    if not isinstance(ortho, str):
        raise InvalidRequest(f"alwayson_scripts.pulid ortho must be off, v1 or v2, got {shown(ortho)}.")
    face = FaceOptions(
        photos=(), face_index=tuple(face_index), start_step=number("start_step", 0, int),
        id_weight=None if values.get("id_weight") is None else number("id_weight", None, float),  # None: the family's default
        num_zero=number("num_zero", 20, int), ortho=ortho, true_cfg=number("true_cfg", 1.0, float),
        true_cfg_start=number("true_cfg_start", 1, int),
    )
    return photos, face


def echo_parameters(body: Txt2ImgRequest | Img2ImgRequest) -> dict:
    """`parameters` as A1111 echoes it: init_images and mask set to null (as A1111 does), photo data shortened."""
    parameters = body.known()
    if isinstance(body, Img2ImgRequest):
        parameters.update(init_images=None, mask=None)
    scripts = parameters.get("alwayson_scripts") or {}
    for name, script in list(scripts.items()):
        if isinstance(name, str) and SCRIPT_NAMES.get(name.strip().lower()) == "pulid" and isinstance(script, dict):
            scripts[name] = {**script, "args": _short_images(script.get("args"))}
    return parameters


def _short_images(value):
    if isinstance(value, str) and len(value) > 256:
        return f"<image, {len(value):,} base64 characters>"
    if isinstance(value, list):
        return [_short_images(v) for v in value]
    if isinstance(value, dict):
        return {k: _short_images(v) for k, v in value.items()}
    return value


# -- the response -----------------------------------------------------------------------------------

STANDARD_KEYS = {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model", "Variation seed",
                 "Variation seed strength", "Clip skip", "Version", "Prompt", "Negative prompt"}


def info_json(body: Txt2ImgRequest | Img2ImgRequest, result: GenerationResult | None, images: list, warnings: list[str], timestamp: str,
              batch_size: int | None = None) -> str:
    """A1111's `Processed.js()` keys, from what really ran; Likeness's own figures under `likeness`."""
    request = result.request if result is not None else None
    infotexts = [item.infotext for item in images]
    parsed = parse_infotext(infotexts[0]) if infotexts else {}
    seeds = [item.seed for item in images]
    prompt = request.prompt if request else body.prompt
    negative = request.negative_prompt if request else body.negative_prompt
    varied = request is not None and request.subseed_strength > 0
    subseed = request.subseed if varied else body.subseed
    # Each image's variation seed, as its infotext says: the run's subseed, then the next ones.
    subseeds = [int(parse_infotext(text).get("Variation seed", subseed)) for text in infotexts] if varied else [subseed] * len(images)
    info = {
        "prompt": prompt,
        # each image's own (the lines of "Prompts from file or textbox" differ)
        "all_prompts": [parse_infotext(text).get("Prompt", prompt) for text in infotexts],
        "negative_prompt": negative,
        "all_negative_prompts": [parse_infotext(text).get("Negative prompt", "") for text in infotexts],
        "seed": seeds[0] if seeds else body.seed,
        "all_seeds": seeds,
        "subseed": subseed,
        "all_subseeds": subseeds,
        "subseed_strength": request.subseed_strength if varied else body.subseed_strength,
        "width": request.width if request else body.width,
        "height": request.height if request else body.height,
        "sampler_name": parsed.get("Sampler", request.sampler if request else body.sampler_name),
        "cfg_scale": request.cfg_scale if request else body.cfg_scale,
        "steps": request.steps if request else body.steps,
        "batch_size": batch_size or (request.batch_size if request else body.batch_size),
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": parsed.get("Model", request.model if request else None),
        "sd_model_hash": parsed.get("Model hash"),
        "sd_vae_name": parsed.get("VAE"),
        "sd_vae_hash": parsed.get("VAE hash"),
        "seed_resize_from_w": request.seed_resize_from_w or -1 if request else -1,  # A1111 says -1 for off
        "seed_resize_from_h": request.seed_resize_from_h or -1 if request else -1,
        "denoising_strength": body.denoising_strength,
        "extra_generation_params": {k: v for k, v in parsed.items() if k not in STANDARD_KEYS and not k.endswith(("-1", "-2"))},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": body.styles or [],
        "job_timestamp": timestamp,
        "clip_skip": request.clip_skip if request else 1,
        "is_using_inpainting_conditioning": False,
        "version": parsed.get("Version", ""),
        "warnings": warnings,
    }
    if result is not None:
        info["likeness"] = {k: v for k, v in result.summary().items() if k not in ("images", "infotexts", "request")}
    return json.dumps(info, default=str)


def api_vae(manager, value, what: str) -> str:
    """A1111's sd_vae value as Likeness's VAE name: Automatic/None/null = the model's own; a file of models/VAE
    (by file name or stem); InvalidRequest listing the files otherwise."""
    if value is None:
        return VAE_AUTOMATIC
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a VAE's name, got {shown(value)}.")
    try:
        path = find_vae(value, manager.config.models_dir, manager.config.allow_pickle)
    except ModelNotFound as error:
        raise InvalidRequest(f"{what}: {error}") from None
    return path.name if path is not None else VAE_AUTOMATIC


# -- extras: upscale a finished picture ---------------------------------------------------------------

FACE_RESTORERS = {"gfpgan_visibility": "GFPGAN", "codeformer_visibility": "CodeFormer"}


def extras_request(body: _ExtrasBase, image: Image.Image) -> tuple[UpscaleRequest, list[str]]:
    """A1111's extras fields as an `UpscaleRequest` (not saved: A1111's API does not save extras), and notes for
    what Likeness does not do. `resize_mode` 1 upscales to upscaling_resize_w x upscaling_resize_h."""
    if isinstance(body.resize_mode, bool) or body.resize_mode not in (0, 1):
        raise InvalidRequest(f"resize_mode must be 0 (upscale by upscaling_resize) or 1 (upscale to upscaling_resize_w x "
                             f"upscaling_resize_h), got {shown(body.resize_mode)}.")
    notes = [f"Unknown field {name!r} was ignored." for name in body.extras()]
    for field_name, restorer in FACE_RESTORERS.items():
        if getattr(body, field_name):
            notes.append(f"{field_name} was ignored: Likeness has no {restorer} face restorer (its face detailer redraws "
                         "faces during a generation).")
    scale_to = body.resize_mode == 1
    request = UpscaleRequest(image, upscaler=body.upscaler_1, scale=body.upscaling_resize,
                             width=body.upscaling_resize_w if scale_to else 0, height=body.upscaling_resize_h if scale_to else 0,
                             crop=body.upscaling_crop, upscaler_2=body.upscaler_2,
                             upscaler_2_visibility=body.extras_upscaler_2_visibility, save=False)
    return request, notes


def extras_png(result: UpscaleResult) -> str:
    """The upscaled picture as base64 PNG with its text chunks (the picture's parameters, the postprocessing), as A1111 sends it."""
    buffer = io.BytesIO()
    more = {"postprocessing": result.postprocessing} if result.postprocessing else None
    result.image.save(buffer, format="PNG", pnginfo=png_with_parameters(result.image, result.parameters, more))
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def extras_html(postprocessing: str, notes: list[str]) -> str:
    """A1111's `html_info`: the postprocessing text as `plaintext_to_html` writes it, one line per note after it."""
    lines = [postprocessing] + notes if postprocessing else notes
    return "<p>" + "<br>\n".join(html.escape(line) for line in lines) + "</p>"
