"""The Gradio app: tabs over the one pipeline manager created in app.py."""
from __future__ import annotations

import logging

import gradio as gr

from pipelines import devices
from pipelines.manager import PipelineManager
from ui import generate_tab

log = logging.getLogger("likeness")
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
    return f"**Device** {status['device']} · **Loaded** {loaded} · **Memory** {status['memory']}"


def build(manager: PipelineManager, settings, store) -> gr.Blocks:
    with gr.Blocks(title="Likeness") as demo:
        gr.Markdown("## Likeness")
        status = gr.Markdown(status_line(manager), elem_id="status")
        for message in store.messages:
            gr.Markdown(f"⚠ {message}")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                generate = generate_tab.build(manager, settings, store)
        generate["generate_event"].then(lambda: status_line(manager), None, status, api_visibility="private")
        demo.load(lambda: status_line(manager), None, status, api_visibility="private")
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
        prevent_thread_lock=not block,
        show_error=False,
    )
    return demo if not block else 0
