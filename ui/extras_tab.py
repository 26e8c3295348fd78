"""The Extras tab: upscale a finished picture, as A1111's Extras tab ("Single Image", its upscale part).

Controls in A1111's names and order: the picture, *Scale by* / *Scale to* (width, height, *Crop to fit*),
*Upscaler 1*, *Upscaler 2* and its visibility; *Upscale* and *Stop*. The picture is size-checked from its
file header before it is decoded (Settings: *Largest input image*), the run takes its turn in the one GPU
queue with the generations, and the readout counts the upscaler's tiles. The engine is `pipelines.extras`;
*Send to Extras* in Generate, PNG Info and History fills the picture (`wire_sends`).

*Batch Process* (A1111's): many uploaded pictures through the same settings one after another, each saved as a single
upscale is; the readout names the picture in hand, the gallery fills, Stop ends the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from pipelines.errors import LikenessError
from pipelines.extras import RESIZE_MODES, UPSCALER_NONE, UpscaleRequest, UpscaleResult
from pipelines.images import open_input_image
from pipelines.jobs import tagged
from pipelines.manager import PipelineManager
from pipelines.upscale import list_upscalers
from ui.img2img_tab import gallery_path, max_pixels, upload_path, uploads
from ui.jobs import Job, board_for, parallel_jobs
from ui.session import STOP_REPLIES, STOPPED_BEFORE_START, BackgroundJob, CancelRegistry, arm_then, session_id

TAB_ID = "extras"
MODES = ("single", "batch")  # the picture sub-tabs' ids: A1111's Single Image and Batch Process


def upscaler_choices(manager: PipelineManager) -> list[str]:
    """"None", then every image upscaler that can run: Lanczos, Nearest and the usable ESRGAN files."""
    usable = [c.name for c in list_upscalers(manager.config.models_dir, manager.config.allow_pickle) if c.kind != "latent" and c.usable]
    return [UPSCALER_NONE, *usable]


def default_upscaler(choices: list[str]) -> str:
    """The first ESRGAN file when there is one (what an upscale is for), else Lanczos."""
    return next((name for name in choices[3:]), "Lanczos")


@dataclass
class ExtrasTab:
    image: gr.Image
    message: gr.Markdown
    upscalers: list  # Upscaler 1 and 2
    refresh: object  # (upscaler 1, upscaler 2) -> their updates, with the files now in models/ESRGAN


def result_text(result: UpscaleResult, source_size: tuple[int, int]) -> str:
    saved = f"saved to `{result.path}`" if result.path else "not saved"
    done = "**Unchanged**" if not result.postprocessing else "**Upscaled**"
    lines = [f"{done} {source_size[0]}x{source_size[1]} → {result.describe()} · {saved}"]
    if result.postprocessing:
        lines.append(f"`{result.postprocessing}`")
    lines += [f"⚠ {note}" for note in result.notes]
    return "  \n".join(lines)


def build(manager: PipelineManager, settings, cancels: CancelRegistry, page: gr.Tab) -> ExtrasTab:
    choices = upscaler_choices(manager)
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Tabs(selected="single", elem_id="extras_modes"):
                with gr.Tab("Single Image", id="single", elem_id="extras_tab_single") as single_page:
                    image = gr.Image(label="Picture", type="filepath", sources=["upload", "clipboard"],
                                     elem_id="extras_image", height=360)
                with gr.Tab("Batch Process", id="batch", elem_id="extras_tab_batch") as batch_page:
                    pictures = gr.File(file_count="multiple", file_types=["image"], label="Pictures (each upscaled with the settings below)",
                                       elem_id="extras_pictures", height=300)
            mode = gr.State("single")
            message = gr.Markdown(elem_id="extras_message")
            resize_mode = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize", elem_id="extras_resize_mode")
            scale = gr.Slider(1.0, 8.0, value=2.0, step=0.05, label="Scale by", elem_id="extras_scale")
            with gr.Row(visible=False) as scale_to:
                width = gr.Number(512, label="Width", precision=0, minimum=1, elem_id="extras_width")
                height = gr.Number(512, label="Height", precision=0, minimum=1, elem_id="extras_height")
                crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras_crop")
            upscaler = gr.Dropdown(choices, value=default_upscaler(choices), label="Upscaler 1", elem_id="extras_upscaler")
            with gr.Row():
                upscaler_2 = gr.Dropdown(choices, value=UPSCALER_NONE, label="Upscaler 2", elem_id="extras_upscaler_2")
                visibility = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Upscaler 2 visibility", elem_id="extras_upscaler_2_visibility")
            with gr.Row():
                run = gr.Button("Upscale", variant="primary", elem_id="extras_run")
                stop = gr.Button("Stop", elem_id="extras_stop")
        with gr.Column(scale=1):
            readout = gr.Markdown(elem_id="extras_readout")
            output = gr.Image(label="Upscaled", type="filepath", interactive=False, format="png", elem_id="extras_output", height=480)
            gallery = gr.Gallery(label="Upscaled pictures", visible=False, columns=3, height=480, elem_id="extras_gallery")
            info = gr.Markdown(elem_id="extras_info")

    for sub_page, page_mode in ((single_page, "single"), (batch_page, "batch")):
        sub_page.select(lambda m=page_mode: (m, gr.update(visible=m == "single"), gr.update(visible=m == "batch")), None,
                        [mode, output, gallery], api_visibility="private", queue=False)

    def switch_mode(mode):
        by = mode == RESIZE_MODES[0]
        return gr.update(visible=by), gr.update(visible=not by)

    resize_mode.change(switch_mode, resize_mode, [scale, scale_to], queue=False, api_visibility="private")

    def refresh_choices(first, second):  # files dropped into models/ESRGAN since the page opened
        names = upscaler_choices(manager)
        return (gr.Dropdown(choices=names, value=first if first in names else default_upscaler(names)),
                gr.Dropdown(choices=names, value=second if second in names else UPSCALER_NONE))

    page.select(refresh_choices, [upscaler, upscaler_2], [upscaler, upscaler_2], queue=False, api_visibility="private")

    # Named as UpscaleRequest's fields: the Gradio endpoint `/upscale` is called by them. Raw payloads (preprocess=False):
    # the picture's header is checked before it is decoded.
    def upscale(image=None, resize_mode=RESIZE_MODES[0], scale=2.0, width=512, height=512, crop=True, upscaler="Lanczos",
                upscaler_2=UPSCALER_NONE, upscaler_2_visibility=0.0, mode="single", pictures=None, request: gr.Request = None):
        session = session_id(request)
        token = cancels.claim(session)
        scale_to_size = resize_mode == RESIZE_MODES[1]

        def job_for(picture) -> UpscaleRequest:
            return UpscaleRequest(picture, upscaler=upscaler, scale=scale, width=_whole(width) if scale_to_size else 0,
                                  height=_whole(height) if scale_to_size else 0, crop=crop, upscaler_2=upscaler_2,
                                  upscaler_2_visibility=upscaler_2_visibility)

        try:
            # The Batch Process tab (its State is not an API parameter: an API call gives `pictures` and no `image`).
            if mode == "batch" or (upload_path(image) is None and uploads(pictures)):
                yield from _run_batch(manager, uploads(pictures), job_for, max_pixels(settings), token, session)
                return
            path = upload_path(image)
            if path is None:
                yield "⚠ Choose a picture to upscale (drop it on *Picture*).", gr.update(), "", gr.update()
                return
            if token.cancelled:  # Stop pressed while it waited in the queue
                yield STOPPED_BEFORE_START, gr.update(), "", gr.update()
                return
            picture = open_input_image(path, max_pixels(settings), "The picture")
            yield from _run(manager, job_for(picture), token, session, picture.size)
        except LikenessError as error:
            yield f"⚠ {error}", gr.update(), "", gr.update()
        finally:
            cancels.forget(session, token)

    arm_then(run.click, cancels, readout, manager).then(
        upscale, [image, resize_mode, scale, width, height, crop, upscaler, upscaler_2, visibility, mode, pictures],
        [readout, output, info, gallery],
        preprocess=False, api_name="upscale", concurrency_id="gpu", concurrency_limit=parallel_jobs(manager))

    def stop_upscale(request: gr.Request = None):
        return STOP_REPLIES[cancels.signal(session_id(request))].replace("step", "tile")

    stop.click(stop_upscale, None, readout, api_visibility="private", concurrency_limit=None)
    return ExtrasTab(image, message, [upscaler, upscaler_2], refresh_choices)


def _whole(value):
    """A gr.Number's value as an int when it is a whole number (the engine refuses anything else, by name)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _upscaling(manager: PipelineManager, job: UpscaleRequest, token, session: str) -> BackgroundJob:
    """The upscale in a thread, taking its turn in the GPU queue; its `readouts` give the live line."""
    def work(progress):
        board_job = Job("browser", "extras", token, steps=1, batch_count=1)
        with tagged(owner=session, source="browser", kind="extras"), board_for(manager).turn(board_job):
            return manager.upscale(job, progress=progress, cancel=token)

    return BackgroundJob(work, "likeness-upscale")


def _run(manager: PipelineManager, job: UpscaleRequest, token, session: str, source_size: tuple[int, int]):
    """One picture, yielding (readout, output, info, gallery) at the readout's pace."""
    running = _upscaling(manager, job, token, session)
    for line in running.readouts("upscale", "tile"):
        yield line, gr.update(), gr.update(), gr.update()
    message = running.error_message()
    if message is not None:
        yield message, gr.update(), "", gr.update()
        return
    result: UpscaleResult = running.result
    yield f"**Done in {result.seconds:.2f} s**", result.path or result.image, result_text(result, source_size), gr.update()


def _run_batch(manager: PipelineManager, files: list[tuple[str, str]], job_for, limit: int, token, session: str):
    """Batch Process: each picture in turn (a picture that cannot be read is skipped and named), the gallery filling as
    they finish; Stop (or an error) ends the batch, the pictures done so far kept."""
    if not files:
        yield "⚠ Add the pictures to upscale first (drop them on *Pictures*).", gr.update(), "", gr.update()
        return
    done, skipped, lines, failed = [], [], [], None
    for number, (name, path) in enumerate(files, 1):
        if token.cancelled:
            break
        try:
            picture = open_input_image(path, limit, f"The picture {name}")
        except LikenessError as error:
            skipped.append(f"⚠ Skipped: {error}")
            continue
        running = _upscaling(manager, job_for(picture), token, session)
        for line in running.readouts("upscale", "tile"):
            yield f"**Picture {number} of {len(files)}: {Path(name).stem}**  \n{line}", gr.update(), gr.update(), gr.update()
        message = running.error_message()
        if message is not None:
            failed = None if token.cancelled else message
            break
        result: UpscaleResult = running.result
        done.append((result.path or result.image, Path(name).stem))
        lines.append(f"{Path(name).stem}: " + result_text(result, picture.size).split("  \n")[0])
    if token.cancelled:
        head = f"Stopped after {len(done)} of {len(files)} pictures."
    elif failed:
        head = f"{failed}  \n{len(done)} of {len(files)} pictures were upscaled before it."
    else:
        head = f"**Done: {len(done)} of {len(files)} pictures.**"
    yield "  \n".join([head, *skipped]), gr.update(), "  \n".join(lines), done


def wire_send(tab: ExtrasTab, tabs: gr.Tabs, button: gr.Button, source: list, path_of, where: str, nothing: str) -> None:
    """A *Send to Extras* button: `path_of(*raw values of source)` is the picture's file (its parameters go with it,
    into the upscaled PNG); the upscaler lists are refreshed (selecting the tab from here does not run its select event)."""
    def receive(*values):
        *raw, first, second = values
        path = path_of(*raw)
        choices = tab.refresh(first, second)
        if path is None:
            return gr.Tabs(selected=TAB_ID), gr.update(), f"⚠ {nothing}", *choices
        return gr.Tabs(selected=TAB_ID), path, f"Picture sent from {where}.", *choices

    button.click(receive, [*source, *tab.upscalers], [tabs, tab.image, tab.message, *tab.upscalers], preprocess=False,
                 api_visibility="private")


def wire_sends(tab: ExtrasTab, tabs: gr.Tabs, generate: dict, png_info: dict, history) -> None:
    """Send to Extras from Generate's gallery (the selected image), PNG Info (the dropped file) and History (the clicked image)."""
    wire_send(tab, tabs, generate["send_extras"], [generate["gallery"], generate["selected"]], gallery_path, "Generate",
              "Nothing to send yet: generate an image first.")
    wire_send(tab, tabs, png_info["send_extras"], [png_info["upload"]], upload_path, "PNG Info", "Nothing to send: drop an image first.")
    wire_send(tab, tabs, history.send_extras, [history.selected_path], upload_path, "History", "Click an image first, then Send to Extras.")
