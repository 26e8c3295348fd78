"""The img2img tab: start from a picture (img2img) or repaint what the user paints on it (Inpaint), as A1111 lays it out.

Two sub-tabs hold the picture: *img2img* a plain upload, *Inpaint* an ImageEditor whose brush strokes
are the mask (any colour; the eraser takes strokes back). Below them the refine controls (resize
mode, denoising strength; for inpainting mask blur, mask mode, masked content, inpaint area and
padding), then every Generate control, built by the same builders (`ui.generation_form`).

Every picture is size-checked from its file header before it is decoded (`open_image`, the Settings
limit *Largest input image*), on upload and again when the job runs: the handlers take raw payloads
(`preprocess=False`) and open the files themselves, so a bad upload, an empty mask or a strength of
1.5 is a message in the readout, never a Gradio error.

Other tabs send pictures here with `receive` (Generate's and PNG Info's *Send to img2img / inpaint*).

A third sub-tab, *Batch* (A1111's img2img batch), runs many uploaded pictures (and masks paired by file name) through
the same settings one after another, each saved under its own name in a fresh folder (pipelines/batch.py).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import dataclasses

import gradio as gr
from PIL import Image

from pipelines.batch import batch_output_folder, open_batch_picture, paired, save_under_name
from pipelines.errors import InvalidRequest, LikenessError
from pipelines.images import MAX_PHOTO_PIXELS, open_image, read_embedded_text
from pipelines.manager import PipelineManager
from pipelines.refine import EMPTY_MASK_MESSAGE, MASKED_CONTENT, RESIZE_MODES, check_mask, flatten_image, mask_from_layers
from pipelines.request import MAX_FULL_RES_PADDING, MAX_MASK_BLUR
from ui import generation_form, inputs
from ui.last_used import clean_last_generation
from ui.png_info_tab import generate_form_values, sent_report, sent_update
from ui.jobs import parallel_jobs
from ui.session import (SKIP_REPLIES, STOP_REPLIES, STOPPED_BEFORE_START, CancelRegistry, arm_then, cache_namespace, result_markdown,
                        session_id, stream_generation)

log = logging.getLogger("likeness")
PREFIX = "i2i_"
TAB_ID = "img2img"
MODES = ("img2img", "inpaint", "batch")  # the sub-tabs' ids, and what the run does
INPAINT_AREAS = ("Whole picture", "Only masked")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
# The editor reports the picture Send put in it as an upload, once or (on a busy machine) twice; an upload this soon
# after a Send is that echo, and Send's message and size stand.
SEND_ECHO_S = 10.0


def max_pixels(settings) -> int:
    """The Settings limit on input pictures (`max_input_megapixels`), else the photo default."""
    limit = getattr(settings, "max_input_megapixels", None)
    return int(limit * 1_000_000) if isinstance(limit, (int, float)) and limit > 0 else MAX_PHOTO_PIXELS


def open_checked(source, limit: int, what: str) -> Image.Image:
    """A picture from a path or bytes: refused from its header when too large or not an image, then decoded."""
    image = open_image(source, max_pixels=limit, what=what)
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidRequest(f"{what} is damaged or incomplete and cannot be read ({error}).") from None
    return image


def upload_path(raw) -> str | None:
    """The file path of a raw gr.Image / gr.File payload (a FileData dict, or a path)."""
    if isinstance(raw, dict):
        return raw.get("path")
    return raw if isinstance(raw, str) else None


def editor_sources(editor: gr.ImageEditor, raw) -> tuple[object, list]:
    """(background, layers) of a raw ImageEditor payload as paths or bytes, nothing decoded, nothing consumed."""
    if not isinstance(raw, dict):
        return None, []
    if raw.get("id") is not None and raw.get("background") is None:
        cached = editor.blob_storage.get(raw["id"])
        if cached is None:
            return None, []
        return cached.background, [layer for layer in cached.layers if layer is not None]
    background = upload_path(raw.get("background"))
    return background, [upload_path(layer) for layer in raw.get("layers") or [] if upload_path(layer)]


def read_editor(editor: gr.ImageEditor, raw, limit: int) -> tuple[Image.Image | None, Image.Image | None]:
    """The editor's picture (transparency flattened on white) and the painted mask (None when no layer), size-checked."""
    background, layers = editor_sources(editor, raw)
    if background is None:
        return None, None
    image = flatten_image(open_checked(background, limit, "The picture"))
    painted = [open_checked(layer, limit, "The painted mask") for layer in layers]
    if isinstance(raw, dict) and raw.get("id") is not None:
        editor.blob_storage.pop(raw["id"], None)  # the editor's own preprocess would drop it too
    return image, mask_from_layers(painted)


def fitted_size(size: tuple[int, int], family) -> tuple[int, int]:
    """The picture's size as the model can generate it: each side rounded down to the family's multiple, within its range."""
    spec = family.spec
    return tuple(max(spec.min_size, min(spec.max_size, side // spec.size_multiple * spec.size_multiple)) for side in size)


def size_note(image: Image.Image, fitted: tuple[int, int]) -> str:
    if tuple(image.size) == tuple(fitted):
        return f"Size set to the picture's {fitted[0]}x{fitted[1]}."
    return (f"The picture is {image.width}x{image.height}; size set to {fitted[0]}x{fitted[1]} (the model needs these steps and limits), "
            "the resize mode fits the picture to it.")


@dataclass
class Img2ImgTab:
    """What other tabs need: the components `receive` fills, in `targets` order."""

    targets: list
    receive: object  # (path, text, mode, current model) -> updates for `targets`
    run_event: object
    model: gr.Dropdown


@dataclass
class PictureInputs:
    """The img2img, Inpaint and Batch sub-tabs and the picture inputs each holds."""

    modes: gr.Tabs
    pages: tuple  # (sub-tab, its mode) for each
    image: gr.Image
    editor: gr.ImageEditor
    mask_file: gr.Image
    batch_pictures: gr.File
    batch_masks: gr.File


def picture_inputs(limit_mp: float) -> PictureInputs:
    """The sub-tabs, as A1111 lays them out: a plain upload, the painting editor (and a mask file), the batch files."""
    with gr.Tabs(selected="img2img", elem_id=f"{PREFIX}modes") as modes:
        with gr.Tab("img2img", id="img2img", elem_id=f"{PREFIX}tab_img2img") as img2img_page:
            image = gr.Image(label=f"Picture to start from (PNG, JPEG or WebP; at most {limit_mp:g} megapixels)", type="pil",
                             format="png", image_mode="RGBA", sources=("upload", "clipboard"), height=420, elem_id=f"{PREFIX}image")
        with gr.Tab("Inpaint", id="inpaint", elem_id=f"{PREFIX}tab_inpaint") as inpaint_page:
            editor = gr.ImageEditor(
                label="Paint over what to change (brush); the eraser takes strokes back",
                type="pil", image_mode="RGBA", format="png", sources=("upload", "clipboard"), height=460,
                brush=gr.Brush(colors=[("#ffffff", 0.75), ("#ff3399", 0.6), ("#000000", 0.6)], default_color=("#ffffff", 0.75),
                               color_mode="fixed", default_size=24),
                eraser=gr.Eraser(default_size=24), layers=False, transforms=(), elem_id=f"{PREFIX}editor")
            # A1111's "Inpaint upload": a mask made elsewhere (white = repaint), read as painted_mask reads any mask
            mask_file = gr.Image(label="Or a mask from a file (white = repaint; it replaces the painting)", type="filepath",
                                 format="png", sources=("upload", "clipboard"), height=180, elem_id=f"{PREFIX}mask_file")
        with gr.Tab("Batch", id="batch", elem_id=f"{PREFIX}tab_batch") as batch_page:
            gr.Markdown("Each picture runs with the settings below, in file-name order, and is saved under its own name "
                        "in a new folder of `outputs/img2img-batch/` (video frames keep their order; nothing is written over). "
                        "With masks, each picture takes the mask of the same file name (one mask alone serves all) and the "
                        "inpaint settings below apply.", elem_id=f"{PREFIX}batch_note")
            with gr.Row():
                batch_pictures = gr.File(file_count="multiple", file_types=["image"], label="Pictures",
                                         elem_id=f"{PREFIX}batch_pictures", height=220)
                batch_masks = gr.File(file_count="multiple", file_types=["image"], label="Masks (optional)",
                                      elem_id=f"{PREFIX}batch_masks", height=220)
    pages = ((img2img_page, "img2img"), (inpaint_page, "inpaint"), (batch_page, "batch"))
    return PictureInputs(modes, pages, image, editor, mask_file, batch_pictures, batch_masks)


@dataclass
class RefineControls:
    """Resize mode and denoising strength; the inpaint options, shown on the Inpaint and Batch sub-tabs."""

    resize_mode: gr.Radio
    denoising: gr.Slider
    inpaint_options: gr.Group
    mask_blur: gr.Slider
    mask_mode: gr.Radio
    inpainting_fill: gr.Radio
    inpaint_area: gr.Radio
    padding: gr.Slider


def refine_controls() -> RefineControls:
    resize_mode = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode", elem_id=f"{PREFIX}resize_mode",
                           info="how a picture of another size than Width x Height is fitted")
    denoising = inputs.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength", elem_id=f"{PREFIX}denoising_strength",
                              info="0 keeps the picture, 1 ignores it; runs Steps x strength steps")
    with gr.Group(visible=False, elem_id=f"{PREFIX}inpaint_options") as inpaint_options:
        with gr.Row():
            mask_blur = inputs.Slider(0, MAX_MASK_BLUR, value=4, step=1, label="Mask blur", elem_id=f"{PREFIX}mask_blur")
            mask_mode = gr.Radio(list(MASK_MODES), value=MASK_MODES[0], label="Mask mode", elem_id=f"{PREFIX}mask_mode")
        with gr.Row():
            inpainting_fill = gr.Radio(list(MASKED_CONTENT), value="original", label="Masked content", elem_id=f"{PREFIX}inpainting_fill")
        with gr.Row():
            inpaint_area = gr.Radio(list(INPAINT_AREAS), value=INPAINT_AREAS[0], label="Inpaint area", elem_id=f"{PREFIX}inpaint_area",
                                    info="Only masked: a crop around the mask, generated at the full size, pasted back")
            padding = inputs.Slider(0, MAX_FULL_RES_PADDING, value=32, step=4, label="Only masked padding, pixels",
                                    elem_id=f"{PREFIX}inpaint_full_res_padding")
    return RefineControls(resize_mode, denoising, inpaint_options, mask_blur, mask_mode, inpainting_fill, inpaint_area, padding)


@dataclass
class Outputs:
    """The right-hand column: the run panel, the selected image's parameters, before/after, the stage breakdown."""

    panel: object
    infotext: gr.Textbox
    before_after: object
    breakdown: gr.Markdown


def build(manager: PipelineManager, settings, cancels: CancelRegistry, tabs: gr.Tabs) -> Img2ImgTab:
    last, _dropped = clean_last_generation(manager, settings.last_generation)
    chosen_model = generation_form.first_model(manager, last)[0]
    entry = manager.entry(chosen_model)
    family, start = entry.family, entry.starting_values()

    model = generation_form.model_row(manager, chosen_model, PREFIX)
    with gr.Row():
        with gr.Column(scale=3):
            fields, lora_picker, counters = generation_form.prompt_fields(manager, last, PREFIX, chosen_model)
            message = gr.Markdown(elem_id=f"{PREFIX}message")
            pictures = picture_inputs(max_pixels(settings) / 1e6)
            controls = refine_controls()
            sampling, random_seed, reuse_seed = generation_form.sampling_fields(manager, settings, last, family, start, PREFIX)
            fields |= sampling
            fields |= generation_form.hires_fields(manager, last, PREFIX, family)
            fields |= generation_form.refiner_fields(manager, last, PREFIX, family)
            fields |= generation_form.detailer_fields(last, PREFIX)
        with gr.Column(scale=2):
            panel = generation_form.run_panel(PREFIX)
            infotext = gr.Textbox(label="Parameters of the selected image", lines=4, interactive=False, elem_id=f"{PREFIX}infotext")
            outputs = Outputs(panel, infotext, generation_form.before_after_panel(PREFIX), gr.Markdown(elem_id=f"{PREFIX}breakdown"))
    mode = gr.State("img2img")
    sent_to_editor = gr.State(0.0)  # when Send last put a picture in the editor (time.monotonic(); 0 = never)
    last_seed = gr.State(-1)
    form = {"model": model} | fields
    generation_form.wire_form(manager, model, form, lora_picker, random_seed, reuse_seed, last_seed, token_counters=counters)

    for page, page_mode in pictures.pages:
        page.select(lambda m=page_mode: (m, gr.update(visible=m != "img2img")), None, [mode, controls.inpaint_options],
                    api_visibility="private", queue=False)
    wire_uploads(manager, settings, family, model, pictures, message, fields, sent_to_editor)
    run_event = wire_run(manager, settings, cancels, mode, pictures, controls, form, outputs, last_seed)

    # What Send to img2img / inpaint fills: the outer tab, the sub-tab, the mode, both pictures and the mask file (cleared), the
    # message, then the form.
    targets = [tabs, pictures.modes, mode, controls.inpaint_options, pictures.image, pictures.editor, pictures.mask_file, sent_to_editor,
               message, *[form[name] for name in SENT_FIELDS]]
    return Img2ImgTab(targets, receiver(manager, settings, family), run_event, model)


def family_of(manager: PipelineManager, name, fallback):
    """The family of the model named `name`, or `fallback` when it is no model's name."""
    try:
        return manager.entry(name).family
    except LikenessError:
        return fallback


def wire_uploads(manager: PipelineManager, settings, family, model: gr.Dropdown, pictures: PictureInputs, message: gr.Markdown,
                 fields: dict, sent_to_editor: gr.State) -> None:
    """An upload is checked from its header; on success the size follows the picture, with a message."""
    editor = pictures.editor

    def on_image_upload(raw, model_name):
        path = upload_path(raw)
        if not path:
            return gr.update(), gr.update(), gr.update(), gr.update()
        try:
            picture = open_checked(path, max_pixels(settings), "The uploaded file")
        except InvalidRequest as error:
            return f"⚠ {error}", None, gr.update(), gr.update()
        fitted = fitted_size(picture.size, family_of(manager, model_name, family))
        return size_note(picture, fitted), gr.update(), fitted[0], fitted[1]

    def on_editor_upload(raw, model_name, sent):
        background, _layers = editor_sources(editor, raw)
        if background is None:
            return gr.update(), gr.update(), gr.update(), 0.0
        try:
            picture = open_checked(background, max_pixels(settings), "The uploaded file")
        except InvalidRequest as error:  # the editor keeps it (an update to it would wipe strokes): the run refuses it
            return f"⚠ {error} Drop another picture.", gr.update(), gr.update(), 0.0
        if sent and time.monotonic() - sent < SEND_ECHO_S:
            # The picture Send put here, which the editor reports as an upload (once, or twice on a busy machine):
            # Send's message and size stand.
            return gr.update(), gr.update(), gr.update(), sent
        fitted = fitted_size(picture.size, family_of(manager, model_name, family))
        return size_note(picture, fitted) + " Paint over what to change.", fitted[0], fitted[1], 0.0

    pictures.image.upload(on_image_upload, [pictures.image, model], [message, pictures.image, fields["width"], fields["height"]],
                          preprocess=False, api_visibility="private")
    editor.upload(on_editor_upload, [editor, model, sent_to_editor], [message, fields["width"], fields["height"], sent_to_editor],
                  preprocess=False, api_visibility="private")


def refine_values(editor: gr.ImageEditor, settings, mode, image, editor_value, denoising_strength, resize_mode, mask_blur, inpainting_fill,
                  inpaint_area, inpaint_full_res_padding, mask_mode, mask_upload=None) -> tuple[dict, list[str]]:
    """The img2img request fields from the raw controls, and notes; LikenessError with a message for the user."""
    limit = max_pixels(settings)
    values = {"denoising_strength": denoising_strength, "resize_mode": resize_mode}
    notes: list[str] = []
    if mode == "inpaint":
        picture, mask = read_editor(editor, editor_value, limit)
        if picture is None:
            raise LikenessError("Add a picture to the Inpaint tab first (drop one on it, or use Send to inpaint).")
        if upload_path(mask_upload):
            painted = mask is not None and mask.getextrema()[1] > 0  # the editor's empty layer paints nothing
            notes += ["The mask file was used; what is painted on the picture was not."] if painted else []
            mask = open_checked(upload_path(mask_upload), limit, "The mask file")
        invert = mask_mode == MASK_MODES[1]
        if mask is None:
            raise LikenessError(EMPTY_MASK_MESSAGE)
        notes += check_mask(mask, picture.size, invert=invert)
        values |= {"init_image": picture, "mask": mask, "mask_blur": mask_blur, "inpainting_fill": inpainting_fill,
                   "inpaint_full_res": inpaint_area == INPAINT_AREAS[1], "inpaint_full_res_padding": inpaint_full_res_padding,
                   "inpainting_mask_invert": invert}
    else:
        path = upload_path(image)
        if not path:
            raise LikenessError("Add a picture to start from first (drop one on the img2img tab, or use Send to img2img).")
        values["init_image"] = flatten_image(open_checked(path, limit, "The picture"))
    return values, notes


def wire_run(manager: PipelineManager, settings, cancels: CancelRegistry, mode: gr.State, pictures: PictureInputs,
             controls: RefineControls, form: dict, outputs: Outputs, last_seed: gr.State):
    """Generate (a picture, a painted mask, or a batch), Stop, Skip and the gallery's selection; returns the run event."""
    panel, infotexts = outputs.panel, gr.State([])
    unchanged = (gr.update(),) * 4  # infotext, last seed, infotexts, before/after

    # The request first: Gradio injects gr.Request only into positional parameters. Every API parameter is named.
    def run(request: gr.Request, mode="img2img", image=None, editor=None, denoising_strength=0.75, resize_mode=RESIZE_MODES[0],
            mask_blur=4, inpainting_fill="original", inpaint_area=INPAINT_AREAS[0], inpaint_full_res_padding=32, mask_mode=MASK_MODES[0],
            batch_pictures=None, batch_masks=None, mask_file=None, **form):
        session = session_id(request)
        if mode == "batch":
            inpaint = {"mask_blur": mask_blur, "inpainting_fill": inpainting_fill, "inpaint_full_res": inpaint_area == INPAINT_AREAS[1],
                       "inpaint_full_res_padding": inpaint_full_res_padding, "inpainting_mask_invert": mask_mode == MASK_MODES[1]}
            yield from run_batch(manager, settings, cancels, request, batch_pictures, batch_masks,
                                 form | {"denoising_strength": denoising_strength, "resize_mode": resize_mode}, inpaint)
            return
        try:
            refine, notes = refine_values(pictures.editor, settings, mode, image, editor, denoising_strength, resize_mode, mask_blur,
                                          inpainting_fill, inpaint_area, inpaint_full_res_padding, mask_mode, mask_file)
            generation_request = generation_form.coerce_form(form | refine)
            generation_form.check_upscaler(manager, generation_request)
        except (LikenessError, TypeError, ValueError) as error:
            cancels.forget_armed(session)
            yield f"⚠ {error}", None, gr.update(), "", *unchanged
            return
        for update in stream_generation(manager, generation_request, cancels, session, namespace=cache_namespace(request)):
            if update.message:
                yield f"⚠ {update.message}", update.preview_output(), gr.update(), "", *unchanged
                return
            if update.result is None:
                yield update.readout, update.preview_output(), gr.update(), gr.update(), *unchanged
                continue
            result = update.result
            images = [(item.path or item.image, f"seed {item.seed}") for item in result.images]
            texts = [item.infotext for item in result.images]
            readout = update.readout + "".join(f"  \n⚠ {note}" for note in notes)
            yield (readout, None, images, result_markdown(result), texts[0] if texts else "", result.seeds[0], texts,
                   generation_form.before_after_pairs(result))

    refine_inputs = [mode, pictures.image, pictures.editor, controls.denoising, controls.resize_mode, controls.mask_blur, controls.inpainting_fill,
                     controls.inpaint_area, controls.padding, controls.mask_mode, pictures.batch_pictures, pictures.batch_masks,
                     pictures.mask_file]
    run_event = arm_then(panel.generate.click, cancels, panel.readout, manager).then(
        run, refine_inputs, [panel.readout, panel.preview, panel.gallery, outputs.breakdown, outputs.infotext, last_seed, infotexts,
                             outputs.before_after.pairs],
        inputs_kwargs=form, api_name="img2img", concurrency_id="gpu", concurrency_limit=parallel_jobs(manager),
        show_progress_on=generation_form.progress_shown_on(panel),
        preprocess=False,  # raw values: the pictures are opened and checked here, numbers named by validate_request
    )
    run_event.then(outputs.before_after.show, outputs.before_after.pairs, outputs.before_after.outputs, api_visibility="private", queue=False)
    generation_form.wire_forever(panel, run_event, PREFIX)

    def on_select(texts, event: gr.SelectData):
        index = event.index if isinstance(event.index, int) else 0
        return texts[index] if 0 <= index < len(texts) else ""

    panel.gallery.select(on_select, infotexts, outputs.infotext, api_visibility="private", queue=False)

    def stop_run(request: gr.Request = None):
        return STOP_REPLIES[cancels.signal(session_id(request))]

    def skip_run(request: gr.Request = None):
        return SKIP_REPLIES[cancels.signal(session_id(request), skip=True)]

    panel.stop.click(stop_run, None, panel.readout, api_visibility="private", concurrency_limit=None)
    panel.skip.click(skip_run, None, panel.readout, api_visibility="private", concurrency_limit=None)
    return run_event


def run_batch(manager: PipelineManager, settings, cancels: CancelRegistry, request: gr.Request, pictures, masks, fields: dict, inpaint: dict):
    """The Batch sub-tab: each picture through stream_generation (Stop ends the batch; the picture in hand is not
    written), saved under its name; the readout says which picture runs; a picture that cannot be read is skipped."""
    session = session_id(request)
    unchanged = (gr.update(),) * 4
    try:
        items, notes = paired(uploads(pictures), uploads(masks))
        base = generation_form.coerce_form(fields | (inpaint if masks else {}) | {"save": False})
        generation_form.check_upscaler(manager, base)
    except (LikenessError, TypeError, ValueError) as error:
        cancels.forget_armed(session)
        yield f"⚠ {error}", None, gr.update(), "", *unchanged
        return
    folder, gallery, texts, skipped, done, last_seed = None, [], [], [], 0, -1
    for number, item in enumerate(items, 1):
        heading = f"**Picture {number} of {len(items)}: {item.name}**  \n"
        try:
            image, mask = open_batch_picture(item, max_pixels(settings))
        except InvalidRequest as error:
            skipped.append(f"{item.name}: {error}")
            continue
        one = dataclasses.replace(base, init_image=image, mask=mask)
        for update in stream_generation(manager, one, cancels, session, namespace=cache_namespace(request)):
            if update.message:
                stopped = update.message in ("Stopped.", STOPPED_BEFORE_START)
                head = f"Stopped after {done} of {len(items)} pictures." if stopped else f"⚠ {item.name}: {update.message}"
                yield (head + batch_summary(folder, len(gallery), notes, skipped), None, gallery or gr.update(), "",
                       *unchanged)
                return
            if update.result is None:
                yield heading + update.readout, update.preview_output(), gr.update(), gr.update(), *unchanged
                continue
            try:
                folder = folder or batch_output_folder(manager.config.outputs_dir)
                save_under_name(update.result, item.name, folder)
            except LikenessError as error:
                yield f"⚠ {error}" + batch_summary(folder, len(gallery), notes, skipped), None, gallery or gr.update(), "", *unchanged
                return
            done, last_seed = done + 1, update.result.seeds[0]
            gallery += [(generated.path, item.name) for generated in update.result.images]
            texts += [generated.infotext for generated in update.result.images]
            yield heading + update.readout, None, gallery, gr.update(), *unchanged
    yield (f"**Done: {done} of {len(items)} pictures.**" + batch_summary(folder, len(gallery), notes, skipped),
           None, gallery, "", texts[0] if texts else "", last_seed, texts, [])  # Reuse last: the last picture's seed


# The form fields Send to img2img / inpaint fills from the picture's parameters.
SENT_FIELDS = ("model", "prompt", "negative_prompt", "steps", "cfg_scale", "seed", "sampler", "schedule_type", "vae_dtype", "width", "height")


def receiver(manager: PipelineManager, settings, family):
    """Img2ImgTab.receive: (path, text, mode, current model) -> updates for its `targets`."""

    def receive(path, text, target_mode, current_model):
        """Updates for `targets`: the picture at `path` (checked) with the parameters `text` it carried."""
        keep = [gr.update()] * len(SENT_FIELDS)
        if not path:  # the user stays where they are: say it there
            gr.Warning("Nothing to send: there is no image yet.")
            return (gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update(),
                    "⚠ Nothing to send: there is no image yet.", *keep)
        try:
            picture = flatten_image(open_checked(path, max_pixels(settings), "The image"))
        except InvalidRequest as error:
            return (gr.Tabs(selected=TAB_ID), gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update(),
                    f"⚠ {error}", *keep)
        values, notes = generate_form_values(text, manager, {"model": current_model}) if text else ({}, [])
        fitted = fitted_size(picture.size, family_of(manager, values.get("model", current_model), family))
        values["width"], values["height"] = fitted
        if not text:
            notes.append("The image carries no generation parameters: only the picture was sent.")
        where = "Inpaint: paint over what to change, then Generate." if target_mode == "inpaint" else "img2img."
        text_out = sent_report(f"{where} {size_note(picture, fitted)}", notes, text, SENT_FIELDS)
        editor_value = {"background": picture, "layers": [], "composite": picture} if target_mode == "inpaint" else gr.update()
        image_value = picture if target_mode == "img2img" else gr.update()
        updates = [sent_update(name, values) for name in SENT_FIELDS]
        return (gr.Tabs(selected=TAB_ID), gr.Tabs(selected=target_mode), target_mode, gr.update(visible=target_mode == "inpaint"),
                image_value, editor_value, None if target_mode == "inpaint" else gr.update(),  # a mask file of another picture: gone
                time.monotonic() if target_mode == "inpaint" else 0.0, text_out, *updates)

    return receive


def uploads(raw) -> list[tuple[str, str]]:
    """(file name, path) of each file of a raw multiple gr.File payload: the name the user's file had, the path Gradio
    stored it under."""
    files = raw if isinstance(raw, list) else [raw] if raw else []
    pairs = []
    for item in files:
        path = upload_path(item)
        if path:
            name = item.get("orig_name") if isinstance(item, dict) else None
            pairs.append((name or path.rsplit("/", 1)[-1], path))
    return pairs


def batch_summary(folder, images: int, notes: list[str], skipped: list[str]) -> str:
    """The lines under a batch's last readout: where the images went, what was left out."""
    lines = [f"{images} images saved in `{folder}`." if folder is not None else "Nothing was saved."]
    lines += [f"⚠ {note}" for note in notes] + [f"⚠ Skipped {text}" for text in skipped]
    return "".join(f"  \n{line}" for line in lines)


def gallery_path(gallery, index) -> str | None:
    """The file of the `index`-th image of a raw gr.Gallery payload (the first when the index is off)."""
    if not gallery:
        return None
    index = index if isinstance(index, int) and 0 <= index < len(gallery) else 0
    item = gallery[index]
    if isinstance(item, dict):
        item = item.get("image") or item
    if isinstance(item, (list, tuple)):
        item = item[0]
    return upload_path(item)


def parameters_of(path: str | None) -> str:
    """The A1111 parameters text of a picture file, or "" (a bad file is reported when it is opened)."""
    if not path:
        return ""
    try:
        text, _notes = read_embedded_text(path)
    except (LikenessError, OSError):
        return ""
    return text or ""


def wire_send_from_gallery(tab: Img2ImgTab, gallery: gr.Gallery, selected: gr.State, send_img2img: gr.Button, send_inpaint: gr.Button) -> None:
    """Generate's Send to img2img / inpaint: the selected image of the gallery, with its parameters."""
    for button, target_mode in ((send_img2img, "img2img"), (send_inpaint, "inpaint")):
        def send(gallery_value, index, current_model, target_mode=target_mode):
            path = gallery_path(gallery_value, index)
            return tab.receive(path, parameters_of(path), target_mode, current_model)

        button.click(send, [gallery, selected, tab.model], tab.targets, preprocess=False, api_visibility="private")


def wire_send_from_file(tab: Img2ImgTab, upload: gr.File, raw_text: gr.Textbox, send_img2img: gr.Button, send_inpaint: gr.Button) -> None:
    """PNG Info's Send to img2img / inpaint: the dropped file and the parameters read from it."""
    for button, target_mode in ((send_img2img, "img2img"), (send_inpaint, "inpaint")):
        def send(file_value, text, current_model, target_mode=target_mode):
            return tab.receive(upload_path(file_value), text, target_mode, current_model)

        button.click(send, [upload, raw_text, tab.model], tab.targets, preprocess=False, api_visibility="private")
