"""The Face tab: 1-4 reference photos, the detection debug view, PuLID controls, and Generate.

Every Generate-tab setting applies (model, prompt, size, sampler, seed, VAE...); this tab adds the
face and the PuLID controls, and runs through the same manager, readout and metadata.
"""
from __future__ import annotations

import logging

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from pipelines.choices import ORTHO_MODES
from pipelines.errors import LikenessError, ModelNotFound
from pipelines.face.options import ID_WEIGHTS, MAX_ID_WEIGHT, MAX_PHOTOS, FaceOptions
from pipelines.families import Family
from pipelines.manager import PipelineManager
from ui import inputs
from ui.generation_form import model_choices
from ui.generate_tab import FORM_FIELDS, _coerce_form
from ui.jobs import parallel_jobs
from ui.last_used import remember_last_generation
from ui.session import STOP_REPLIES, CancelRegistry, arm_then, cache_namespace, result_markdown, session_id, stream_generation

log = logging.getLogger("likeness")
DEFAULT_FACE = FaceOptions()  # the official apps' defaults, for the controls and for API callers that leave them out


def id_weight_slider(manager: PipelineManager, model: str | None, current: float | None = None) -> tuple[float, float]:
    """(value, maximum) of the ID weight slider for `model`: its family's official range (FLUX.1 0-3,
    SDXL 0-5) and default (1 / 0.8). A value the user chose is kept while it fits; another family's
    default (or nothing yet) becomes this family's default."""
    limits = ID_WEIGHTS[pulid_family(manager, model) or Family.SDXL]
    defaults = {r.default for r in ID_WEIGHTS.values()}
    if current is None or current in defaults or not 0 <= current <= limits.maximum:
        return limits.default, limits.maximum
    return float(current), limits.maximum


def files_markdown(manager: PipelineManager) -> str:
    """The face files as a table; each status is a word in a coloured mark (CSS), not an emoji a
    system without an emoji font draws as an empty box."""
    rows = ["| file | for | status |", "|---|---|---|"]
    for status in manager.face.file_status():
        if not status.required:
            continue
        if status.present:
            state = '<span class="file-mark file-found">found</span>' + (f" ({status.note})" if status.note else "")
        else:
            state = f'<span class="file-mark file-missing">missing</span> put it in `{status.folder}`'
        rows.append(f"| `{status.name}` | {status.purpose} | {state} |")
    return "\n".join(rows)


def pulid_family(manager: PipelineManager, model: str | None) -> Family | None:
    """The PuLID family (SDXL, FLUX.1) of `model`; None for another family or a model not found."""
    try:
        family = manager.entry(model).family if model else None
    except LikenessError:
        return None
    return family if family in ID_WEIGHTS else None


def model_note(manager: PipelineManager, model: str | None) -> str:
    """The Face tab's model hint: which PuLID the model gets, or why it gets none."""
    family = pulid_family(manager, model)
    if family is Family.FLUX:
        return "FLUX.1: PuLID-FLUX. Shared with the Generate tab."
    if family is Family.SDXL:
        return "SDXL: PuLID v1.1. Shared with the Generate tab."
    return "No PuLID for this model: choose an SDXL or FLUX.1 model. Shared with the Generate tab."


def missing_files_message(manager: PipelineManager, model: str | None, error: LikenessError) -> str:
    """A missing face file found while working: name every file the chosen model still lacks (the
    table's list, not only the one the failing step needed)."""
    if not isinstance(error, ModelNotFound):
        return str(error)
    family = pulid_family(manager, model)
    return manager.face.missing(family.value if family else None) or str(error)


def photo_thumbnails(files) -> list[tuple[str, str]]:
    return [(path, f"photo {number}") for number, path in enumerate(photo_paths(files), start=1)]


def parse_face_numbers(text: str, photos: int) -> tuple[int, ...]:
    """'1, 2' -> (0, 1): which detected face to use per photo (1 = the largest)."""
    if not text or not text.strip():
        return ()
    try:
        numbers = [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise LikenessError(f"Face numbers must be whole numbers separated by commas, like '1, 2'; got {text!r}.") from None
    if any(n < 1 for n in numbers) or len(numbers) > photos:
        raise LikenessError(f"Give at most one face number (1 or more) per photo; got {text!r} for {photos} photo(s).")
    return tuple(n - 1 for n in numbers)


def photo_paths(files) -> list[str]:
    return [getattr(f, "name", f) for f in (files or [])]


def debug_view(face) -> list[tuple[Image.Image, str]]:
    """The official demo's debug view: boxes and scores, the aligned crop, the EVA-CLIP input."""
    marked = Image.fromarray(face.image)
    draw = ImageDraw.Draw(marked)
    for number, detected in enumerate(face.choice.faces):
        chosen = number == face.choice.index
        draw.rectangle([float(v) for v in detected.bbox], outline=(0, 220, 0) if chosen else (230, 160, 0), width=4 if chosen else 2)
        draw.text((float(detected.bbox[0]) + 4, float(detected.bbox[1]) + 4), f"#{number + 1} {detected.det_score:.2f}", fill=(255, 255, 255))
    views = [(marked, f"{face.source}: {len(face.choice.faces)} face(s), using #{face.choice.index + 1}"),
             (Image.fromarray(face.aligned), f"{face.source}: aligned 512x512")]
    if face.parsing_input is not None:
        views.append((Image.fromarray(np.asarray(face.parsing_input)), f"{face.source}: to EVA-CLIP"))
    return views


def copy_text_js(source_id: str, target_id: str) -> str:
    """A `change` handler run in the browser (no request per keystroke) that copies the text of the box `source_id`
    into the box `target_id`. It reads the text on the page: Gradio's `input` event misses a paste or an edit
    without keys, and the value handed to the handler can be older than the box's. While the user types in the
    target, the target keeps its own text: the copy back of one keystroke arrives after the next ones."""
    return ("(value) => { const source = document.querySelector('#%s textarea'), target = document.querySelector('#%s textarea');"
            " if (target && document.activeElement === target) return target.value; return source ? source.value : value; }"
            % (source_id, target_id))


def shared_prompt_boxes(generate_form: dict) -> tuple[gr.Textbox, gr.Textbox]:
    """The prompt and negative prompt on the Face tab: the Generate tab's own (a face run uses them), shown and
    editable here too, so the prompt a face run draws is on the page that runs it. Typing in either box
    updates the other; so do Send-to-Generate, the examples and the last-used values at start."""
    boxes = []
    for field, label, info in (("prompt", "Prompt", "the same as the Generate tab's; its Styles apply too"),
                               ("negative_prompt", "Negative prompt", "the same as the Generate tab's")):
        source = generate_form[field]
        mirror = gr.Textbox(label=label, lines=source.lines, value=source.value, placeholder=source.placeholder,
                            info=info, elem_id=f"face_{field}")
        # Both ways on `change`: the copy of an equal text changes nothing, so the two settle after one round.
        mirror.change(None, mirror, source, js=copy_text_js(mirror.elem_id, source.elem_id), queue=False, api_visibility="private")
        source.change(None, source, mirror, js=copy_text_js(source.elem_id, mirror.elem_id), queue=False, api_visibility="private")
        boxes.append(mirror)
    return boxes[0], boxes[1]


def build(manager: PipelineManager, settings, store, generate_form: dict, cancels: CancelRegistry, kept_latents: gr.State) -> dict:
    files = gr.Markdown(files_markdown(manager), elem_id="face_files")
    chosen = generate_form["model"].value
    face_model = gr.Dropdown(model_choices(manager), value=chosen, label="Model", info=model_note(manager, chosen), elem_id="face_model",
                             allow_custom_value=True)
    prompt, negative = shared_prompt_boxes(generate_form)
    with gr.Row():
        with gr.Column(scale=2):
            photos = gr.File(label=f"Reference photos (1-{MAX_PHOTOS})", file_count="multiple", file_types=["image"], elem_id="face_photos")
            thumbnails = gr.Gallery(label="Photos", format="png", columns=MAX_PHOTOS, rows=1, height=170, object_fit="contain",
                                    allow_preview=False, interactive=False, elem_id="face_thumbnails")
            face_numbers = gr.Textbox(label="Face per photo (1 = largest)", placeholder="e.g. 1, 2", elem_id="face_numbers")
            detect_info = gr.Markdown(elem_id="face_detect_info")
            debug = gr.Gallery(label="Detection", format="png", columns=3, height=300, elem_id="face_debug")
        with gr.Column(scale=2):
            # Built with the widest range (API callers send any family's weight; the engine checks the
            # family's); the browser narrows it to the chosen model's family below.
            weight, _ = id_weight_slider(manager, generate_form["model"].value)
            id_weight = inputs.Slider(0, MAX_ID_WEIGHT, value=weight, step=0.05, label="ID weight", info="SDXL 0-5 (0.8), FLUX 0-3 (1.0); 0 = PuLID off", elem_id="face_id_weight")
            start_step = inputs.Slider(0, 10, value=DEFAULT_FACE.start_step, step=1, label="Start step", info="FLUX: 4 for photoreal, 0-1 for stylised", elem_id="face_start")
            num_zero = inputs.Slider(0, 80, value=DEFAULT_FACE.num_zero, step=1, label="Num zero (SDXL)", info="more = more editable, less likeness", elem_id="face_num_zero")
            ortho = gr.Radio(list(ORTHO_MODES), value=DEFAULT_FACE.ortho, label="Ortho (SDXL)", elem_id="face_ortho")
            # Full width, like the controls above (side by side, one label wrapped to three lines and the other to none).
            true_cfg = inputs.Slider(1, 10, value=DEFAULT_FACE.true_cfg, step=0.5, label="True CFG (FLUX)", info="1 = off; >1 adds a negative-prompt pass per step (2x the time)", elem_id="face_true_cfg")
            true_cfg_start = inputs.Slider(0, 20, value=DEFAULT_FACE.true_cfg_start, step=1, label="True CFG from step (FLUX)", info="the step it starts at", elem_id="face_true_cfg_start")
            with gr.Row():
                generate = gr.Button("Generate with face", variant="primary", elem_id="face_generate")
                stop = gr.Button("Stop", variant="stop", elem_id="face_stop")
            readout = gr.Markdown("Ready.", elem_id="face_readout")
            gallery = gr.Gallery(label="Images", format="png", columns=2, height="auto", elem_id="face_gallery")  # as on Generate
            breakdown = gr.Markdown(elem_id="face_breakdown")

    def on_photos(files, numbers, model):
        paths = photo_paths(files)
        if not paths:
            return "", []
        try:
            faces = manager.face.inspect(paths, parse_face_numbers(numbers, len(paths)))
        except LikenessError as error:
            return f"⚠ {missing_files_message(manager, model, error)}", []
        except Exception as error:  # a broken model file must not take the tab down
            log.exception("face detection failed")
            return f"⚠ Face detection failed: {error.__class__.__name__}: {error}", []
        notes = [note for face in faces for note in face.notes]
        text = f"Detected on {len(faces)} photo(s) with {faces[0].provider or 'onnxruntime'}." + "".join(f"  \n⚠ {n}" for n in notes)
        return text, [view for face in faces for view in debug_view(face)]

    def on_model(model, current):
        value, most = id_weight_slider(manager, model, current)
        return gr.update(value=value, maximum=most), gr.update(value=model, info=model_note(manager, model))

    # One model for both tabs: the Face tab's picker sets Generate's (whose change runs as if chosen there), and
    # the official apps' ID weight range and default follow it. `input`: only the user's choice, so no loop.
    generate_form["model"].change(on_model, [generate_form["model"], id_weight], [id_weight, face_model], api_visibility="private", queue=False)
    face_model.input(lambda model: model, face_model, generate_form["model"], api_visibility="private", queue=False)
    photos.change(photo_thumbnails, photos, thumbnails, api_visibility="private", queue=False)
    photos.change(on_photos, [photos, face_numbers, generate_form["model"]], [detect_info, debug], api_visibility="private")
    face_numbers.submit(on_photos, [photos, face_numbers, generate_form["model"]], [detect_info, debug], api_visibility="private")

    # The request first: Gradio injects gr.Request only into positional parameters. Every API parameter is named: the face controls here, then the request's own field names
    # (`inputs_kwargs`), so `client.predict(photos=[...], prompt="...", api_name="/generate_face")` works.
    def run(request: gr.Request, photos, face_numbers=None, id_weight=DEFAULT_FACE.id_weight, start_step=DEFAULT_FACE.start_step,
            num_zero=DEFAULT_FACE.num_zero, ortho=DEFAULT_FACE.ortho, true_cfg=DEFAULT_FACE.true_cfg,
            true_cfg_start=DEFAULT_FACE.true_cfg_start, **form):
        session = session_id(request)
        paths = photo_paths(photos)
        try:
            if not paths:
                raise LikenessError("Add a reference photo with a face first.")
            face = FaceOptions(tuple(paths), parse_face_numbers(face_numbers, len(paths)), None if id_weight is None else float(id_weight),
                               int(start_step), int(num_zero),
                               ortho, float(true_cfg), int(true_cfg_start))
            generation_request = _coerce_form(form)
        except (LikenessError, TypeError, ValueError) as error:
            cancels.forget_armed(session)
            yield f"⚠ {error}", gr.update(), "", gr.update()
            return
        for update in stream_generation(manager, generation_request, cancels, session, face=face, namespace=cache_namespace(request)):
            if update.message:
                yield f"⚠ {update.message}", gr.update(), "", gr.update()
                return
            if update.result is None:
                yield update.readout, gr.update(), gr.update(), gr.update()
                continue
            result = update.result
            remember_last_generation(settings, request, generation_request)
            images = [(item.path or item.image, f"seed {item.seed}") for item in result.images]
            yield update.readout, images, result_markdown(result), result.kept_latents

    arm_then(generate.click, cancels, readout, manager).then(
        run, [photos, face_numbers, id_weight, start_step, num_zero, ortho, true_cfg, true_cfg_start], [readout, gallery, breakdown, kept_latents],
        inputs_kwargs=generate_form,
        api_name="generate_face", concurrency_id="gpu", concurrency_limit=parallel_jobs(manager),
    )

    def stop_face(request: gr.Request = None):
        return STOP_REPLIES[cancels.signal(session_id(request))]

    stop.click(stop_face, None, readout, api_visibility="private", concurrency_limit=None)
    # "model": the Models tab's refresh lists new models in it too.
    return {"files": files, "photos": photos, "id_weight": id_weight, "start_step": start_step, "model": face_model,
            "prompt": prompt, "negative_prompt": negative}
