"""The Gradio app: tabs over the one pipeline manager created in app.py.

Each tab is a module with a `build(...)` function; adding a tab (Face, Experiments) is one more
`with gr.Tab(...)` block here.
"""
from __future__ import annotations

import logging

import gradio as gr

from pipelines import devices
from pipelines.manager import PipelineManager
from ui import caches_tab, experiments_tab, face_tab, generate_tab, models_tab, png_info_tab, settings_tab
from ui.session import CancelRegistry

log = logging.getLogger("likeness")
GENERATE_TAB_ID = "generate"
# Ctrl+Enter generates from anywhere on the page, as in A1111.
SHORTCUTS_JS = """
() => {
  document.addEventListener('keydown', (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === 'Enter') {
      const button = document.querySelector('#generate');
      if (button) { event.preventDefault(); button.click(); }
    }
  });
}
"""


def status_line(manager: PipelineManager) -> str:
    status = manager.status()
    loaded = ", ".join(f"{r['name']} ({r['level']})" for r in status["loaded"]) or "none"
    vae = "auto → " + status["vae_policy"].split(" (")[0] + (f", last run {status['vae_dtype']}" if status["vae_dtype"] else "")
    return f"**Device** {status['device']} · **Loaded** {loaded} · **VAE** {vae} · **Memory** {status['memory']}"


def build(manager: PipelineManager, settings, store) -> gr.Blocks:
    cancels = CancelRegistry()  # Stop reaches a browser session's run, from whichever tab started it
    with gr.Blocks(title="Likeness") as demo:
        with gr.Row():
            gr.Markdown("## Likeness")
            status = gr.Markdown(status_line(manager), elem_id="status")
        for message in store.messages:
            gr.Markdown(f"⚠ {message}", elem_classes=["settings-warning"])
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id=GENERATE_TAB_ID):
                generate = generate_tab.build(manager, settings, store, cancels)
            with gr.Tab("Face", id="face"):
                face = face_tab.build(manager, settings, store, generate["form"], cancels)
            with gr.Tab("Experiments", id="experiments"):
                experiments = experiments_tab.build(manager, settings, generate["form"], cancels, face)
            with gr.Tab("Models", id="models"):
                models = models_tab.build(manager, [generate["form"]["model"]])
            with gr.Tab("PNG Info", id="png_info"):
                png_info_tab.build(manager, generate["form"], tabs, GENERATE_TAB_ID)
            with gr.Tab("Settings", id="settings") as settings_page:
                settings_tab.build(manager, settings, store, settings_page, generate["form"]["vae_dtype"])
            with gr.Tab("Caches", id="caches"):
                caches = caches_tab.build(manager)
        refresh_status = lambda: status_line(manager)  # noqa: E731
        generate["generate_event"].then(refresh_status, None, status, api_visibility="private")
        experiments["run_event"].then(refresh_status, None, status, api_visibility="private")
        generate["generate_event"].then(caches["refresh"], None, caches["table"], api_visibility="private")
        timer = gr.Timer(5.0)  # memory and residency change outside this tab too (other sessions, loads)
        timer.tick(refresh_status, None, status, api_visibility="private", queue=False)
        demo.load(refresh_status, None, status, api_visibility="private")
    return demo


def launch(manager: PipelineManager, settings, store, listen: bool = False, port: int = 7860, block: bool = True):
    if not manager.has_real_models():
        log.info("No models in %s: preparing the demo model (tiny, random weights)…", manager.config.models_dir)
        manager.prepare_demo_model()
    log.info("Device: %s", devices.describe_device(manager.device))
    demo = build(manager, settings, store)
    demo.queue(max_size=settings.max_queue_size, default_concurrency_limit=1)
    demo.launch(
        server_name="0.0.0.0" if listen else "127.0.0.1",
        server_port=port,
        allowed_paths=[str(manager.config.outputs_dir)],
        js=SHORTCUTS_JS,
        prevent_thread_lock=True,
        show_error=False,
        quiet=True,
    )
    log.info("Likeness is running on http://%s:%d", "0.0.0.0" if listen else "127.0.0.1", port)
    if block:
        demo.block_thread()
        return 0
    return demo
