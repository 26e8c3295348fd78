"""The Models tab: the catalog, what sits in VRAM and RAM, load/unload, refresh."""
from __future__ import annotations

import gradio as gr

from pipelines.errors import LikenessError
from pipelines.manager import PipelineManager
from ui.jobs import parallel_jobs
from ui.caches_tab import human_bytes
from ui.session import session_id
from ui.workers_view import QUEUE_COLUMNS, WORKER_COLUMNS, has_workers, queue_rows, residency, worker_table

QUEUE_REFRESH_S = 2.0  # the queue table follows jobs starting and ending (reading it asks no worker anything)
COLUMNS = ["name", "family", "format", "size", "in memory", "last load", "problem", "path"]  # a long path last: scrolled to, not in the way
LORA_COLUMNS = ["LoRA (<lora:name:weight>)", "family", "layout", "size (MiB)", "text encoder", "with the selected model", "path"]


def catalog_rows(manager: PipelineManager) -> list[list]:
    resident = {r.name: r for r in manager.cache.records()}
    on_workers = residency(manager) if has_workers(manager) else None  # this process loads nothing then
    rows = []
    for entry in manager.models():
        record = resident.get(entry.name)
        in_memory = f"{record.level}{' (locked)' if record.locked else ''}" if record else ""
        report = manager.last_load(entry.name)
        size = record.size_bytes if record else entry.size_bytes
        rows.append([
            entry.name,
            entry.family.spec.label if entry.family else "?",
            entry.format,
            human_bytes(size) if size else "-",  # in MiB for the small demo model; "-": not measured until loaded
            on_workers.get(entry.name, "") if on_workers is not None else in_memory,
            f"{report.source} {report.seconds:.2f} s" if report else "",
            entry.problem or "",
            str(entry.path),
        ])
    return rows


def lora_rows(manager: PipelineManager, model_name: str | None) -> list[list]:
    """The LoRA files, and for each whether it can be used with `model_name` (and if not, why)."""
    family = None
    if isinstance(model_name, str) and model_name:
        try:
            family = manager.entry(model_name).family
        except LikenessError:
            family = None
    rows = []
    for entry in manager.loras():
        verdict = entry.problem or (entry.unusable_with(family) if family else None) or ("usable" if family else "")
        rows.append([
            entry.name,
            entry.family.spec.label if entry.family else "?",
            entry.layout,
            round(entry.size_bytes / 2**20, 1),
            "yes" if entry.text_encoder else "no",
            verdict,
            str(entry.path),
        ])
    return rows


def memory_summary(manager: PipelineManager) -> str:
    if has_workers(manager):
        return f"Models load on the {len(manager.workers())} Ray workers below; Load picks an idle worker without the model."
    status = manager.status()
    return (
        f"RAM cache {human_bytes(status['ram_cache_bytes'])} of {manager.cache.ram_budget_bytes / 2**30:.1f} GiB · "
        f"VRAM {human_bytes(status['vram_cache_bytes'])} · {status['memory']}"
    )


def model_list(manager: PipelineManager) -> list[dict]:
    """The `/list_models` API: one dict per catalog entry.

    The folder is under "location", not "path": gradio_client treats any dict with a "path" key
    as a file to download.
    """
    resident = {r.name: r.level for r in manager.cache.records()}
    return [
        {"name": e.name, "family": e.family.value if e.family else None, "format": e.format, "size_bytes": e.size_bytes,
         "location": str(e.path), "usable": e.usable, "problem": e.problem, "in_memory": resident.get(e.name)}
        for e in manager.models()
    ]


def build(manager: PipelineManager, model_dropdowns: list, tab: gr.Tab | None = None) -> dict:
    """Lay out the tab. Its figures are read when a page opens and whenever `tab` (this tab) is shown:
    models are loaded by other tabs, sessions and the API, so figures kept from build time would be stale."""
    usable = [e.name for e in manager.models() if e.usable]
    first = usable[0] if usable else None
    with gr.Row():
        chosen = gr.Dropdown(usable, value=first, label="Model", scale=3, elem_id="models_choice", allow_custom_value=True)
        load = gr.Button("Load", elem_id="models_load", scale=0)
        unload = gr.Button("Unload", elem_id="models_unload", scale=0)
        refresh = gr.Button("Refresh", elem_id="models_refresh", scale=0)
    message = gr.Markdown(elem_id="models_message")
    # A callable value is read again on every page load.
    memory = gr.Markdown(lambda: memory_summary(manager), elem_id="models_memory")
    workers = gr.Dataframe(lambda: worker_rows(manager), headers=WORKER_COLUMNS, interactive=False, wrap=True,
                           elem_id="models_workers", label="Ray workers", visible=has_workers(manager))
    queue = gr.Dataframe(lambda: queue_rows(manager), headers=QUEUE_COLUMNS, interactive=False, wrap=True, elem_id="models_queue",
                         label="Queue: running jobs and where they run, then waiting jobs in line (empty: nothing running)")

    def queue_now(request: gr.Request):
        return queue_rows(manager, session_id(request))

    gr.Timer(QUEUE_REFRESH_S).tick(queue_now, None, queue, api_visibility="private", queue=False)
    table = gr.Dataframe(lambda: catalog_rows(manager), headers=COLUMNS, interactive=False, wrap=True, elem_id="models_table",
                         label="Models")
    loras = gr.Dataframe(lambda: lora_rows(manager, first), headers=LORA_COLUMNS, interactive=False, wrap=True, elem_id="models_loras",
                         label=f"LoRAs in {manager.config.models_dir / 'Lora'} (use <lora:name:weight> in the prompt)")
    if tab is not None:
        tab.select(lambda name: (memory_summary(manager), catalog_rows(manager), lora_rows(manager, name), worker_rows(manager)), chosen,
                   [memory, table, loras, workers], api_visibility="private", queue=False)

    def on_load(name):
        try:
            text = manager.load(name).describe()
        except LikenessError as error:
            text = f"⚠ {error}"
        return text, catalog_rows(manager), memory_summary(manager)

    def on_unload(name):
        try:
            text = f"Unloaded {name}." if manager.unload(name) else f"{name} was not loaded."
        except RuntimeError as error:  # locked: in use by a generation
            text = f"⚠ {error}"
        return text, catalog_rows(manager), memory_summary(manager)

    def on_refresh():
        manager.refresh()
        names = [e.name for e in manager.models() if e.usable]
        problems = sum(1 for e in manager.models() if not e.usable)
        text = f"Found {len(names)} usable model(s)" + (f", {problems} with problems (see the table)." if problems else ".")
        from ui.generate_tab import model_choices

        updates = [gr.update(choices=model_choices(manager)) for _ in model_dropdowns]
        return (text, catalog_rows(manager), memory_summary(manager), gr.update(choices=names), *updates)

    gpu = {"concurrency_id": "gpu", "concurrency_limit": parallel_jobs(manager)}
    for button, handler, api_name in ((load, on_load, "load_model"), (unload, on_unload, "unload_model")):
        event = button.click(handler, chosen, [message, table, memory], api_name=api_name, **gpu)
        if has_workers(manager):  # not an output of the API routes: their replies keep A1111-era shapes
            event.then(lambda: worker_rows(manager), None, workers, api_visibility="private", queue=False)
    refresh.click(on_refresh, None, [message, table, memory, chosen, *model_dropdowns], api_visibility="private").then(
        lambda name: lora_rows(manager, name), chosen, loras, api_visibility="private")
    chosen.change(lambda name: lora_rows(manager, name), chosen, loras, api_visibility="private")
    def list_models() -> list[dict]:
        return model_list(manager)

    gr.api(list_models, api_name="list_models")
    return {"table": table, "memory": memory, "loras": loras, "workers": workers, "queue": queue}


def worker_rows(manager) -> list[list]:
    """The Ray workers' table (empty without workers: the table is hidden then)."""
    return worker_table(manager) if has_workers(manager) else []
