"""A1111's GET /sdapi/v1/script-info: the scripts a client may name, each argument in the order `args` takes it.

A1111 lists every script twice (txt2img, then img2img) with its Gradio controls' label, default, range and choices;
clients read it to build `alwayson_scripts` / `script_args` lists. Here the same shape describes what
`mapping.prepare` reads, with the engine's own defaults and limits (an argument given as one object uses these
labels as its keys)."""
from __future__ import annotations

from pipelines.choices import ORTHO_MODES, REFINER_NONE
from pipelines.face.options import MAX_ID_WEIGHT, MAX_PHOTOS, FaceOptions
from pipelines.prompt_lines import POSITIONS
from pipelines.request import (DEEPCACHE_SCHEDULES, FLUX_CACHE_CHOICES, MAX_DEEPCACHE_BRANCH, MAX_DEEPCACHE_INTERVAL, MAX_REFINER_SWITCH,
                               MAX_STEPS, MIN_REFINER_SWITCH, GenerationRequest)
from pipelines.vae import VAE_CHOICES
from ui.a1111.mapping import ADETAILER_STRENGTH, PROMPT_LINES_SCRIPT, PULID_KEYS



def arg(label: str, value=None, minimum=None, maximum=None, step=None, choices=None) -> dict:
    """One of A1111's ScriptArg objects."""
    return {"label": label, "value": value, "minimum": minimum, "maximum": maximum, "step": step, "choices": choices}


def _pulid_args() -> list[dict]:
    ranges = {
        "images": arg("images", [], 1, MAX_PHOTOS),  # base64 photos of one person
        "id_weight": arg("id_weight", None, 0, MAX_ID_WEIGHT, 0.05),  # None: the family's default (SDXL 0.8, FLUX.1 1)
        "start_step": arg("start_step", FaceOptions.start_step, 0, MAX_STEPS - 1, 1),
        "num_zero": arg("num_zero", FaceOptions.num_zero, 0, 80, 1),
        "ortho": arg("ortho", FaceOptions.ortho, choices=list(ORTHO_MODES)),
        "true_cfg": arg("true_cfg", FaceOptions.true_cfg, 1, 10, 0.1),
        "true_cfg_start": arg("true_cfg_start", FaceOptions.true_cfg_start, 0, MAX_STEPS - 1, 1),
        "face_index": arg("face_index", []),  # per photo: 0 = its largest face
    }
    return [ranges[key] for key in PULID_KEYS]


def _always_on() -> dict[str, list[dict]]:
    """The always-on scripts by A1111 name; a leading `true`/`false` in `args` switches one on or off."""
    return {
        "pulid": _pulid_args(),
        "deepcache": [arg("interval", GenerationRequest.deepcache_interval, 1, MAX_DEEPCACHE_INTERVAL, 1),
                      arg("branch", GenerationRequest.deepcache_branch, 0, MAX_DEEPCACHE_BRANCH, 1),
                      arg("schedule", GenerationRequest.deepcache_schedule, choices=list(DEEPCACHE_SCHEDULES))],
        "flux block cache": [arg("mode", GenerationRequest.flux_cache, choices=list(FLUX_CACHE_CHOICES)),
                             arg("threshold", GenerationRequest.flux_cache_threshold, 0, 1, 0.01)],
        "approximate cache": [arg("enabled", True)],
        "vae precision": [arg("dtype", GenerationRequest.vae_dtype, choices=list(VAE_CHOICES))],
        # ADetailer's own format: an optional skip-img2img flag, then one object per unit (its face models run)
        "adetailer": [arg("ad_model", "face_yolov8n.pt"), arg("ad_prompt", ""), arg("ad_denoising_strength", ADETAILER_STRENGTH, 0, 1, 0.01),
                      arg("ad_mask_k_largest", 0, 0), arg("ad_use_steps", False), arg("ad_steps", 28, 1, MAX_STEPS, 1)],
        # A1111's built-in Refiner: [enabled, checkpoint, switch at]
        "refiner": [arg("checkpoint", REFINER_NONE), arg("switch_at", GenerationRequest.refiner_switch_at, MIN_REFINER_SWITCH, MAX_REFINER_SWITCH, 0.01)],
    }


def _prompt_lines_args() -> list[dict]:
    """A1111 1.10's "Prompts from file or textbox" script_args (the position may be left out)."""
    return [arg("Iterate seed every line", False), arg("Use same random seed for all lines", False),
            arg("Insert prompts at the", POSITIONS[0], choices=list(POSITIONS)), arg("List of prompt inputs", "")]


def script_info() -> list[dict]:
    """A1111's ScriptInfo list: each script for txt2img, then for img2img."""
    listed, always_on = [], _always_on()
    for img2img in (False, True):
        listed += [{"name": name, "is_alwayson": True, "is_img2img": img2img, "args": args} for name, args in always_on.items()]
        listed.append({"name": PROMPT_LINES_SCRIPT, "is_alwayson": False, "is_img2img": img2img, "args": _prompt_lines_args()})
    return listed


def script_names() -> dict[str, list[str]]:
    """A1111's GET /scripts: the names `alwayson_scripts` and `script_name` take, per tab."""
    names = list(_always_on()) + [PROMPT_LINES_SCRIPT]
    return {"txt2img": names, "img2img": list(names)}
