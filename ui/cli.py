"""The headless command line: `generate`, `upscale`, `merge`, `models`, `bench`. Exit codes: 0 ok, 1 internal error,
2 bad input (the message says which), 130 interrupted."""
from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path

from pipelines import demo
from pipelines.batch import BatchPicture, batch_output_folder, folder_pictures, named, open_batch_picture, paired, save_under_name
from pipelines.errors import GenerationCancelled, InvalidRequest, LikenessError
from pipelines.extras import UpscaleRequest, plan_upscale
from pipelines.merge import MergeRequest
from pipelines.prompt_lines import check_requests, line_requests, parse_lines, read_prompt_file
from pipelines.face.options import FaceOptions
from pipelines.generate import CancelToken
from pipelines.images import open_input_image
from pipelines.lora.files import lora_folders
from pipelines.lora.tags import LoraSyntaxError, with_lora_tags
from pipelines.manager import PipelineManager
from pipelines.request import GenerationRequest
from pipelines.telemetry import Notice, StageEnded, StepDone, format_step
from pipelines.exit_status import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK
from ui.refine_options import find_upscaler, masked_content_name, resize_mode_name

log = logging.getLogger("likeness")


def _print_err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_guarded(action) -> int:
    """Run a command; turn our errors into a one-line message and an exit code, never a traceback."""
    try:
        return action()
    except GenerationCancelled as error:
        _print_err(f"stopped: {error}")
        return EXIT_INTERRUPTED
    except LikenessError as error:
        _print_err(f"error: {error}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _print_err("interrupted")
        return EXIT_INTERRUPTED
    except Exception as error:  # the last resort: say what happened; the traceback only with --verbose
        log.debug("internal error", exc_info=True)
        _print_err(f"internal error: {error.__class__.__name__}: {error}" + ("" if log.isEnabledFor(logging.DEBUG) else " (run with --verbose for the traceback)"))
        return EXIT_INTERNAL


def face_options(args) -> FaceOptions | None:
    """`--face PHOTO ...` and the PuLID flags as the Face tab's options; None without a photo."""
    photos = getattr(args, "face", None)
    if not photos:
        if getattr(args, "face_index", None):
            raise InvalidRequest("--face-index needs a reference photo: add --face PHOTO.")
        return None
    numbers = args.face_index or []
    if len(numbers) > len(photos) or any(n < 1 for n in numbers):
        raise InvalidRequest(f"--face-index takes one number (1 = the largest face) per --face photo; got {numbers} for {len(photos)} photo(s).")
    return FaceOptions(tuple(photos), tuple(n - 1 for n in numbers), args.id_weight, args.start_step, args.num_zero, args.ortho,
                       args.true_cfg, args.true_cfg_start)


# flag -> (GenerationRequest field, what it needs). A flag of a mode that is off is an error, not ignored.
IMG2IMG_FLAGS = {"strength": "denoising_strength", "resize_mode": "resize_mode"}
INPAINT_FLAGS = {"mask_blur": "mask_blur", "masked_content": "inpainting_fill", "only_masked": "inpaint_full_res",
                 "only_masked_padding": "inpaint_full_res_padding", "invert_mask": "inpainting_mask_invert"}
HIRES_FLAGS = {"hires_upscaler": "hires_upscaler", "hires_steps": "hires_steps", "hires_denoising": "hires_denoising",
               "hires_prompt": "hires_prompt", "hires_negative_prompt": "hires_negative_prompt", "hires_sampler": "hires_sampler",
               "hires_schedule_type": "hires_schedule_type", "hires_checkpoint": "hires_checkpoint"}
DETAIL_FLAGS = {"face_detail_strength": "face_detail_strength", "face_detail_steps": "face_detail_steps",
                "face_detail_prompt": "face_detail_prompt", "face_detail_faces": "face_detail_faces"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _given(args, names) -> dict:
    """The flags of `names` the user gave (a default of None or False means not given)."""
    values = {name: getattr(args, name, None) for name in names}
    return {name: value for name, value in values.items() if value is not None and value is not False}  # 0 is given (0 == False)


def refine_fields(args, manager: PipelineManager) -> dict:
    """GenerationRequest fields from the img2img / inpaint / hires / detailer flags; InvalidRequest for a
    flag without its mode, a file that is missing, not an image or too large. The files are opened
    (header first, against the max_input_megapixels setting) before any model loads."""
    fields: dict = {}
    init_path, mask_path = getattr(args, "init_image", None), getattr(args, "mask", None)
    img2img, inpaint = _given(args, IMG2IMG_FLAGS), _given(args, INPAINT_FLAGS)
    if init_path is None and (img2img or mask_path is not None):
        flag = "--mask" if mask_path is not None else _flag(next(iter(img2img)))
        raise InvalidRequest(f"{flag} needs --init-image PATH (the picture to start from).")
    if mask_path is None and inpaint:
        raise InvalidRequest(f"{_flag(next(iter(inpaint)))} needs --mask PATH (white = the area to repaint).")
    hires_scale = getattr(args, "hires_scale", None)
    hires = _given(args, HIRES_FLAGS)
    if hires and (hires_scale is None or hires_scale == 1):
        raise InvalidRequest(f"{_flag(next(iter(hires)))} needs --hires-scale above 1 (the hires pass is off at 1), e.g. --hires-scale 2.")
    refiner, switch_at = getattr(args, "refiner", None), getattr(args, "refiner_switch_at", None)
    if switch_at is not None and refiner is None:
        raise InvalidRequest("--refiner-switch-at needs --refiner MODEL (the model that takes over).")
    fields |= {"refiner_checkpoint": refiner} if refiner is not None else {}
    fields |= {"refiner_switch_at": switch_at} if switch_at is not None else {}
    detail = _given(args, DETAIL_FLAGS)
    if detail and not getattr(args, "face_detail", False):
        raise InvalidRequest(f"{_flag(next(iter(detail)))} needs --face-detail (the face detailer is off without it).")
    limit = manager.config.max_input_pixels
    if init_path is not None and batch_folder_given(args):  # each picture is opened when its turn comes (cmd_generate)
        fields.update({IMG2IMG_FLAGS[name]: value for name, value in img2img.items()})
        fields.update({INPAINT_FLAGS[name]: value for name, value in inpaint.items()})
    elif init_path is not None:
        fields["init_image"] = open_input_image(init_path, limit, "The init image")
        fields.update({IMG2IMG_FLAGS[name]: value for name, value in img2img.items()})
    if mask_path is not None and not batch_folder_given(args):
        fields["mask"] = open_input_image(mask_path, limit, "The mask")
        fields.update({INPAINT_FLAGS[name]: value for name, value in inpaint.items()})
    if "resize_mode" in fields:
        fields["resize_mode"] = resize_mode_name(fields["resize_mode"])
    if "inpainting_fill" in fields:
        fields["inpainting_fill"] = masked_content_name(fields["inpainting_fill"])
    if hires_scale is not None:
        fields["hires_scale"] = hires_scale
        fields.update({HIRES_FLAGS[name]: value for name, value in hires.items()})
        if "hires_upscaler" in fields:
            fields["hires_upscaler"], note = find_upscaler(manager.config.models_dir, fields["hires_upscaler"], manager.config.allow_pickle)
            if note:
                _print_err(f"note: {note}")
    if getattr(args, "face_detail", False):
        fields["face_detail"] = True
        fields.update({DETAIL_FLAGS[name]: value for name, value in detail.items()})
    return fields


def batch_folder_given(args) -> bool:
    init = getattr(args, "init_image", None)
    return init is not None and Path(init).expanduser().is_dir()


def batch_pictures(args) -> tuple[list[BatchPicture], list[str]]:
    """--init-image FOLDER (+ --mask FOLDER or FILE): the pictures in name order with their masks, and notes."""
    pictures = named(folder_pictures(args.init_image, "--init-image"))
    mask = getattr(args, "mask", None)
    if mask is None:
        return paired(pictures)
    masks = named(folder_pictures(mask, "--mask")) if Path(mask).expanduser().is_dir() else named([Path(mask).expanduser()])
    return paired(pictures, masks)


def demo_brief() -> str:
    """What the demo model draws, in a few words (the CLI's notes)."""
    if demo.SHIP_TRAINED_DEMO:
        return f"tiny, trained on simple shapes and faces: try --prompt '{demo.EXAMPLE_PROMPTS[0]}'"
    return "tiny, random weights: noise-like images"


def lora_prompt(args) -> str:
    """`--prompt` with each `--lora NAME:WEIGHT` appended as an A1111 `<lora:NAME:WEIGHT>` tag."""
    if args.prompt is None and not getattr(args, "prompts_file", None):
        raise InvalidRequest("generate needs --prompt TEXT (or --prompts-file FILE with one prompt per line).")
    try:
        return with_lora_tags(args.prompt or "", getattr(args, "lora", None) or [])
    except LoraSyntaxError as error:
        raise InvalidRequest(str(error)) from None


def cmd_generate(manager: PipelineManager, args) -> int:
    model = args.model or manager.default_model()
    if model == manager.default_model() and not manager.has_real_models():
        _print_err(f"note: no models found in {manager.config.models_dir}; using the demo model ({demo_brief()}).")
    request = GenerationRequest(
        model=model, prompt=lora_prompt(args), negative_prompt=args.negative_prompt, steps=args.steps, cfg_scale=args.cfg_scale,
        seed=args.seed, width=args.width, height=args.height, sampler=args.sampler, batch_size=args.batch_size,
        batch_count=args.batch_count, vae_dtype=args.vae_dtype, deepcache_interval=args.deepcache,
        deepcache_branch=args.deepcache_branch, deepcache_schedule=args.deepcache_schedule, flux_cache=args.flux_cache,
        flux_cache_threshold=args.flux_cache_threshold, approximate_cache=args.approx_cache, save=not args.no_save,
        clip_skip=args.clip_skip, styles=tuple(args.style), subseed=args.subseed, subseed_strength=args.subseed_strength, tiling=args.tiling,
        vae=args.vae, schedule_type=args.schedule_type, seed_resize_from_w=args.seed_resize_from[0], seed_resize_from_h=args.seed_resize_from[1],
        token_merging_ratio=args.token_merging_ratio if args.token_merging_ratio is not None else 0.0, **refine_fields(args, manager),
    )
    face = face_options(args)
    cancel = CancelToken()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.cancel())  # Ctrl+C stops at the next step

    def show(event) -> None:
        if args.json:
            return
        if isinstance(event, StepDone):
            end = "\n" if event.index == event.total else ""
            print(f"\r{format_step(event)}   ", end=end, file=sys.stderr, flush=True)
        elif isinstance(event, StageEnded) and event.stage != "denoise":
            _print_err(f"{event.stage}: {event.seconds:.2f} s" + (f" ({event.detail})" if event.detail else ""))
        elif isinstance(event, Notice):
            _print_err(("warning: " if event.level == "warning" else "") + event.text)

    try:
        if batch_folder_given(args):
            return run_batch(manager, request, args, show, cancel, face)
        if args.prompts_file:
            return run_prompt_lines(manager, request, args, show, cancel, face)
        result = manager.generate(request, listener=show, cancel=cancel, face=face)
    finally:
        signal.signal(signal.SIGINT, previous)
    if args.json:
        print(json.dumps(result.summary()))
        return EXIT_OK
    stages = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.stage_seconds.items())
    print(f"stages: {stages}")
    print(f"denoise: {result.denoise_summary()}; total {result.total_seconds:.2f} s")
    print(f"device {result.device}, denoiser {result.denoiser_dtype}, VAE {result.vae_dtype}; peak memory ({result.memory_kind}) {result.peak_memory_bytes / 2**30:.2f} GiB")
    for image in result.images:
        print(f"seed {image.seed}: {image.path or '(not saved)'}")
    return EXIT_OK


def run_batch(manager: PipelineManager, request: GenerationRequest, args, show, cancel: CancelToken, face) -> int:
    """img2img batch: each picture of the folder through `request`, saved under its name; a picture that cannot be read
    is reported and skipped, Stop (Ctrl+C) ends the batch after the step in hand (that picture is not written)."""
    items, notes = batch_pictures(args)
    for note in notes:
        _print_err(f"note: {note}")
    folder = None if args.no_save else batch_output_folder(manager.config.outputs_dir)
    done, skipped, summaries = 0, [], []
    for number, item in enumerate(items, 1):
        if not args.json:
            _print_err(f"picture {number} of {len(items)}: {item.name}")
        try:
            image, mask = open_batch_picture(item, manager.config.max_input_pixels)
        except InvalidRequest as error:
            _print_err(f"warning: skipped {item.name}: {error}")
            skipped.append(item.name)
            continue
        result = manager.generate(dataclasses.replace(request, init_image=image, mask=mask, save=False), listener=show, cancel=cancel, face=face)
        if folder is not None:
            save_under_name(result, item.name, folder)
        done += 1
        summaries.append({"picture": item.name, **result.summary()})
        if not args.json:
            for generated in result.images:
                print(f"{item.name}: seed {generated.seed}: {generated.path or '(not saved)'}")
    where = f" in {folder}" if folder is not None else " (not saved)"
    if args.json:
        print(json.dumps({"batch": str(folder) if folder else None, "done": done, "skipped": skipped, "pictures": summaries}))
    else:
        print(f"batch: {done} of {len(items)} pictures{where}" + (f"; skipped {', '.join(skipped)}" if skipped else ""))
    return EXIT_OK if done else EXIT_BAD_INPUT


def run_prompt_lines(manager: PipelineManager, request: GenerationRequest, args, show, cancel: CancelToken, face) -> int:
    """--prompts-file: every line read and checked first (a bad one stops it before anything runs), then one
    generation per line; Ctrl+C stops at the next step and ends the list."""
    lines = parse_lines(read_prompt_file(Path(args.prompts_file).expanduser(), f"--prompts-file {args.prompts_file!r}"))
    requests = line_requests(request, lines, args.iterate_seed, args.same_seed, args.prompt_position)
    check_requests(lines, requests, lambda name: manager.entry(name).family)
    for note in (note for line in lines for note in line.notes):
        _print_err(f"note: {note}")
    summaries = []
    for number, (line, one) in enumerate(zip(lines, requests), 1):
        if not args.json:
            _print_err(f"line {number} of {len(lines)} (line {line.number} of the file): {one.prompt[:80]}")
        result = manager.generate(one, listener=show, cancel=cancel, face=face)
        summaries.append({"line": line.number, **result.summary()})
        if not args.json:
            for image in result.images:
                print(f"line {line.number}: seed {image.seed}: {image.path or '(not saved)'}")
    if args.json:
        print(json.dumps({"lines": summaries}))
    else:
        print(f"prompts file: {len(lines)} lines, {sum(len(s['images']) for s in summaries)} images")
    return EXIT_OK


def cmd_upscale(manager: PipelineManager, args) -> int:
    """`app.py upscale IMAGE...`: every picture opened and every field checked before the first one runs."""
    limit = manager.config.max_input_pixels
    requests = []
    for path in args.images:
        request = UpscaleRequest(open_input_image(path, limit, f"The picture {path}"), upscaler=args.upscaler, scale=args.scale,
                                 width=args.width, height=args.height, crop=not args.no_crop, upscaler_2=args.upscaler_2,
                                 upscaler_2_visibility=args.upscaler_2_visibility, save=not args.no_save)
        plan_upscale(request, manager.config.models_dir, manager.config.allow_pickle)
        requests.append((path, request))
    cancel = CancelToken()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.cancel())  # Ctrl+C stops at the next tile

    def show(done: int, total: int) -> None:
        if not args.json:
            print(f"\rtile {done}/{total}   ", end="\n" if done == total else "", file=sys.stderr, flush=True)

    try:
        for path, request in requests:
            result = manager.upscale(request, progress=show, cancel=cancel)
            for note in result.notes:
                _print_err(f"note: {note}")
            if args.json:
                print(json.dumps({"input": str(path), "path": result.path, "width": result.image.width, "height": result.image.height,
                                  "seconds": round(result.seconds, 3), "device": result.device, "postprocessing": result.postprocessing,
                                  "notes": result.notes}))
            else:
                print(f"{path}: {result.describe()} -> {result.path or '(not saved)'}")
    finally:
        signal.signal(signal.SIGINT, previous)
    return EXIT_OK


def cmd_merge(manager: PipelineManager, args) -> int:
    """`app.py merge`: A1111's Checkpoint Merger; the new model is listed by `app.py models` at once."""
    request = MergeRequest(args.primary, args.secondary, args.tertiary, args.method, args.multiplier, args.name, args.fp16, args.bake_vae)
    cancel = CancelToken()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.cancel())  # Ctrl+C stops before anything is written

    def show(done: int, total: int) -> None:
        if not args.json and (done == total or done % 50 == 0):
            print(f"\rtensor {done}/{total}   ", end="\n" if done == total else "", file=sys.stderr, flush=True)

    try:
        result = manager.merge(request, progress=show, cancel=cancel)
    finally:
        signal.signal(signal.SIGINT, previous)
    if args.json:
        print(json.dumps({"name": result.name, "path": str(result.path), "tensors": result.tensors, "merged": result.merged,
                          "seconds": round(result.seconds, 3), "notes": result.notes}))
        return EXIT_OK
    for note in result.notes:
        _print_err(f"note: {note}")
    print(f"{result.name}: {result.path} ({result.merged} of {result.tensors} tensors merged in {result.seconds:.2f} s)")
    return EXIT_OK


def cmd_models(manager: PipelineManager, args) -> int:
    entries = manager.models()
    if args.json:
        print(json.dumps([
            {"name": e.name, "family": e.family.value if e.family else None, "format": e.format, "size_bytes": e.size_bytes,
             "path": str(e.path), "problem": e.problem} for e in entries
        ], indent=1))
        return EXIT_OK
    print(f"models folder: {manager.config.models_dir}")
    rows = [(e.name, e.family.spec.label if e.family else "?", e.format, f"{e.size_bytes / 2**30:.2f} GiB" if e.size_bytes else "-", str(e.path)) for e in entries]
    widths = [max(len(r[i]) for r in rows + [("name", "family", "format", "size", "path")]) for i in range(5)]
    for row in [("name", "family", "format", "size", "path")] + rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for entry in entries:
        if entry.problem:
            print(f"  ! {entry.name}: {entry.problem}")
    loras = manager.loras()
    if loras:
        print(f"LoRAs ({', '.join(str(folder) for folder in lora_folders(manager.config.models_dir))}); use <lora:NAME:WEIGHT> in the prompt or --lora NAME:WEIGHT:")
        for lora in loras:
            family = lora.family.spec.label if lora.family else "?"
            print(f"  {lora.name}  [{family}, {lora.layout}, {lora.size_bytes / 2**20:.1f} MiB]" + (f"  ! {lora.problem}" if lora.problem else ""))
    if not manager.has_real_models():
        print(f"No real models yet: only the demo model ({demo_brief()}). Put SD 1.5 / SDXL / FLUX.1 weights in {manager.config.models_dir} (see README).")
    return EXIT_OK
