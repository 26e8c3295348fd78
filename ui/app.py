"""The Gradio app: tabs over the one pipeline manager created in app.py.

Each tab is a module with a `build(...)` function; adding a tab (Face, Experiments) is one more
`with gr.Tab(...)` block here.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from pipelines import devices
from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.errors import LikenessError
from pipelines.manager import PipelineManager
from ui import caches_tab, experiments_tab, extras_tab, face_tab, generate_tab, history_tab, img2img_tab, merger_tab, models_tab, png_info_tab, settings_tab
from ui.server import LoopbackHostOnly, ServerOptions, exposure_warnings
from ui.session import CancelRegistry
from ui.shortcuts import SHORTCUTS_JS
from ui.style import CSS
from ui.workers_view import has_workers, workers_status

log = logging.getLogger("likeness")
GENERATE_TAB_ID = "generate"
GRADIO_CACHE_SWEEP_S, GRADIO_CACHE_AGE_S = 600, 3600


def status_line(manager: PipelineManager, kept_latents=None) -> str:
    """The status bar; "last run" is this browser session's own last decode (`kept_latents`), not another user's.
    With Ray workers: every worker instead (this process loads no model then)."""
    if has_workers(manager):
        return workers_status(manager)
    status = manager.status()
    # The demo's long catalog name ("demo (trained on ...)") would wrap the bar; the Model dropdown shows it in full.
    loaded = ", ".join(f"{'demo' if r['name'] == DEMO_MODEL_NAME else r['name']} ({r['level']})" for r in status["loaded"]) or "none"
    last_run = kept_latents.vae_label if kept_latents is not None else None
    vae = "auto → " + status["vae_policy"].split(" (")[0] + (f", last run {last_run}" if last_run else "")
    return f"**Device** {status['device']} · **Loaded** {loaded} · **VAE** {vae} · **Memory** {status['memory']}"


def build(manager: PipelineManager, settings, store, warnings: list[str] = ()) -> gr.Blocks:
    cancels = CancelRegistry()  # Stop reaches a browser session's run, from whichever tab started it
    # Files Gradio keeps for uploads and shown images are deleted an hour after they were made.
    with gr.Blocks(title="Likeness", delete_cache=(GRADIO_CACHE_SWEEP_S, GRADIO_CACHE_AGE_S)) as demo:
        with gr.Row():
            gr.Markdown("## Likeness")
            status = gr.Markdown(status_line(manager), elem_id="status")
        for message in store.messages:
            gr.Markdown(f"⚠ {message}", elem_classes=["settings-warning"])
        for message in warnings:
            gr.Markdown(f"⚠ {message}", elem_classes=["server-warning"])
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id=GENERATE_TAB_ID):
                generate = generate_tab.build(manager, settings, store, cancels)
            with gr.Tab("img2img", id=img2img_tab.TAB_ID):
                img2img = img2img_tab.build(manager, settings, cancels, tabs)
            with gr.Tab("Extras", id=extras_tab.TAB_ID) as extras_page:
                extras = extras_tab.build(manager, settings, cancels, extras_page)
            with gr.Tab("Face", id="face"):
                face = face_tab.build(manager, settings, store, generate["form"], cancels, generate["kept_latents"])
            with gr.Tab("History", id=history_tab.TAB_ID) as history_page:
                history = history_tab.build(manager, history_page)
            with gr.Tab("Experiments", id="experiments"):
                experiments = experiments_tab.build(manager, settings, generate["form"], cancels, face)
            with gr.Tab("Models", id="models") as models_page:
                models = models_tab.build(manager, [generate["form"]["model"], img2img.model, face["model"]], models_page)
            with gr.Tab("PNG Info", id="png_info"):
                png_info = png_info_tab.build(manager, generate["form"], tabs, GENERATE_TAB_ID, generate["readout"])
            with gr.Tab("Checkpoint Merger", id=merger_tab.TAB_ID) as merger_page:
                merger_tab.build(manager, [generate["form"]["model"], img2img.model, face["model"]], merger_page)
            with gr.Tab("Settings", id="settings") as settings_page:
                settings_tab.build(manager, settings, store, settings_page, generate["form"]["vae_dtype"])
            with gr.Tab("Caches", id="caches") as caches_page:
                caches = caches_tab.build(manager, caches_page)
        img2img_tab.wire_send_from_gallery(img2img, generate["gallery"], generate["selected"], generate["send_img2img"], generate["send_inpaint"])
        img2img_tab.wire_send_from_file(img2img, png_info["upload"], png_info["raw"], png_info["send_img2img"], png_info["send_inpaint"])
        extras_tab.wire_sends(extras, tabs, generate, png_info, history)
        wire_history(manager, history, generate, img2img, tabs)
        refresh_status = lambda kept=None: status_line(manager, kept)  # noqa: E731
        kept = generate["kept_latents"]
        generate["generate_event"].then(refresh_status, kept, status, api_visibility="private")
        experiments["run_event"].then(refresh_status, kept, status, api_visibility="private")
        generate["generate_event"].then(caches["refresh"], None, caches["table"], api_visibility="private")
        img2img.run_event.then(refresh_status, kept, status, api_visibility="private")
        img2img.run_event.then(caches["refresh"], None, caches["table"], api_visibility="private")
        timer = gr.Timer(5.0)  # memory and residency change outside this tab too (other sessions, loads)
        timer.tick(refresh_status, kept, status, api_visibility="private", queue=False)
        demo.load(refresh_status, kept, status, api_visibility="private")
    return demo


def prepare_models(manager: PipelineManager) -> None:
    """Without real models, build the demo model (a warning, not a stop, when that fails)."""
    if not manager.has_real_models():  # the demo model logs its own build, the first time only
        try:
            manager.prepare_demo_model()
        except LikenessError as error:  # the app still starts: real models can be added and refreshed
            log.warning("%s", error)


def wire_history(manager: PipelineManager, history: history_tab.HistoryTab, generate: dict, img2img, tabs: gr.Tabs) -> None:
    """History sends as PNG Info does, and lists a run's new images as soon as the run ends."""
    png_info_tab.wire_send_to_generate(manager, generate["form"], tabs, GENERATE_TAB_ID, history.send_generate, history.raw,
                                       history.message, nothing_to_send="⚠ Click an image first, then Send to Generate.",
                                       landing=generate["readout"])
    img2img_tab.wire_send_from_file(img2img, history.selected_path, history.raw, history.send_img2img, history.send_inpaint)
    for run_event in (generate["generate_event"], img2img.run_event):
        run_event.then(history.refresh, history.refresh_inputs, history.refresh_outputs, api_visibility="private")


def launch(manager: PipelineManager, settings, store, options: ServerOptions = ServerOptions(), block: bool = True):
    prepare_models(manager)
    log.info("Device: %s", devices.describe_device(manager.device))
    # Gradio's uploads and the copies of shown images live under Likeness's cache folder, not /tmp.
    os.environ["GRADIO_TEMP_DIR"] = str(Path(manager.config.cache_dir).resolve() / "gradio")
    warnings = exposure_warnings(options)
    for warning in warnings:
        log.warning(warning)
    demo = build(manager, settings, store, warnings)
    demo.queue(max_size=settings.max_queue_size, default_concurrency_limit=1)
    # On loopback, a page from another site must not reach us through a DNS name bound to 127.0.0.1.
    app_kwargs = {} if options.listen else {"middleware": [Middleware(LoopbackHostOnly)]}
    if options.api:  # A1111's /sdapi/v1 routes join Gradio's FastAPI app as it is created, on the same port
        from ui.a1111.routes import api_app_kwargs

        app_kwargs |= api_app_kwargs(manager, settings, options)
    demo.launch(
        server_name=options.host,
        server_port=options.port,
        auth=list(options.auth) or None,
        max_file_size=options.max_upload_mb * 1024 * 1024,
        app_kwargs=app_kwargs,
        allowed_paths=[str(manager.config.outputs_dir)],
        js=SHORTCUTS_JS,
        css=CSS,
        # Gradio's footer "Settings" (its theme and language) next to our Settings tab read as the same thing.
        footer_links=["api", "gradio"],
        prevent_thread_lock=True,
        show_error=False,
        quiet=True,
    )
    log.info("Likeness is running on http://%s:%d%s", options.host, options.port, " (login required)" if options.auth else "")
    if options.api:
        log.info("A1111 API on http://%s:%d/sdapi/v1 (docs: /docs)%s", options.host, options.port, " (--api-auth required)" if options.api_auth else "")
    if block:
        demo.block_thread()
        return 0
    return demo
