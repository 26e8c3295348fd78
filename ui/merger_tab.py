"""The Checkpoint Merger tab, as A1111 lays it out: models A, B, C, a custom name, the multiplier M, the
interpolation method, Save as float16, Bake in VAE, Merge. The engine is `pipelines.merge`; the new model joins every
model list (Generate, img2img, Face, the Models tab) as soon as it is written."""
from __future__ import annotations

import gradio as gr

from pipelines.choices import MERGE_METHODS
from pipelines.generate import CancelToken
from pipelines.manager import PipelineManager
from pipelines.merge import MERGEABLE_FORMATS, MergeRequest, MergeResult, default_name
from pipelines.vae_files import VAE_NONE, vae_files
from ui.generation_form import model_choices
from ui.session import BackgroundJob

TAB_ID = "merger"
METHOD_HELP = {"Weighted sum": "A × (1 − M) + B × M", "Add difference": "A + (B − C) × M", "No interpolation": "A alone"}


def mergeable_models(manager: PipelineManager) -> list[str]:
    """The models the merger takes: usable single-file .safetensors checkpoints."""
    return [e.name for e in manager.models() if e.usable and e.format in MERGEABLE_FORMATS and e.path.suffix.lower() == ".safetensors"]


def result_text(result: MergeResult) -> str:
    lines = [f"**Merged** `{result.name}` in {result.seconds:.1f} s: {result.merged} of {result.tensors} tensors merged · "
             f"saved to `{result.path}`. It is in every model list now."]
    return "  \n".join(lines + result.notes)


def bake_choices(manager: PipelineManager) -> list[str]:
    """"None", then the VAE files of models/VAE (the folders there are in diffusers' layout: not bakeable)."""
    files = vae_files(manager.config.models_dir, manager.config.allow_pickle)
    return [VAE_NONE, *(name for name, path in files.items() if not path.is_dir())]


def build(manager: PipelineManager, model_dropdowns: list, page: gr.Tab) -> None:
    names = mergeable_models(manager)
    gr.Markdown("Merge single-file `.safetensors` checkpoints of one family (A1111's Checkpoint Merger). "
                "The new file is written next to A; nothing is overwritten.", elem_id="merger_intro")
    with gr.Row():
        primary = gr.Dropdown(names, value=None, label="Primary model (A)", elem_id="merger_primary")
        secondary = gr.Dropdown(names, value=None, label="Secondary model (B)", elem_id="merger_secondary")
        tertiary = gr.Dropdown(names, value=None, label="Tertiary model (C)", elem_id="merger_tertiary")
    name = gr.Textbox(label="Custom name (optional)", placeholder="A_0.7-B_0.3-Weighted_sum-merged", elem_id="merger_name")
    multiplier = gr.Slider(0, 1, value=0.3, step=0.05, label="Multiplier (M) - set to 0 to get model A", elem_id="merger_multiplier")
    method = gr.Radio(list(MERGE_METHODS), value=MERGE_METHODS[0], label="Interpolation method",
                      info=" · ".join(f"{m}: {f}" for m, f in METHOD_HELP.items()), elem_id="merger_method")
    with gr.Row():
        half = gr.Checkbox(False, label="Save as float16", elem_id="merger_half")
        # A1111's: a VAE file of models/VAE (its layout) written into the merge in place of A's VAE
        bake_vae = gr.Dropdown(bake_choices(manager), value=VAE_NONE, label="Bake in VAE", elem_id="merger_bake_vae")
    with gr.Row():
        merge = gr.Button("Merge", variant="primary", elem_id="merger_run")
        stop = gr.Button("Stop", elem_id="merger_stop")
    readout = gr.Markdown(elem_id="merger_readout")
    running: dict[str, CancelToken] = {}

    def refresh(*chosen):
        *models, vae = chosen
        names, vaes = mergeable_models(manager), bake_choices(manager)
        return [*(gr.Dropdown(choices=names, value=value if value in names else None) for value in models),
                gr.Dropdown(choices=vaes, value=vae if vae in vaes else VAE_NONE)]

    page.select(refresh, [primary, secondary, tertiary, bake_vae], [primary, secondary, tertiary, bake_vae], queue=False,
                api_visibility="private")

    def suggest(a, b, m, how):  # the name A1111 would give, as the box's placeholder
        request = MergeRequest(a or "A", b or "B", "", how, m)
        return gr.Textbox(placeholder=default_name(request))

    for control in (primary, secondary, multiplier, method):
        control.change(suggest, [primary, secondary, multiplier, method], name, queue=False, api_visibility="private")

    def run(a, b, c, custom, m, how, to_half, vae=VAE_NONE, request: gr.Request = None):
        session = getattr(request, "session_hash", None) or "api"
        token = running[session] = CancelToken()
        try:
            job = MergeRequest(a or "", b or "", c or "", how, m, custom or "", bool(to_half), vae or VAE_NONE)
            yield from _run(manager, job, token, model_dropdowns, [primary, secondary, tertiary])
        finally:
            running.pop(session, None)

    merge.click(run, [primary, secondary, tertiary, name, multiplier, method, half, bake_vae],
                [readout, primary, secondary, tertiary, *model_dropdowns], api_name="merge", concurrency_id="merge")

    def stop_merge(request: gr.Request = None):
        token = running.get(getattr(request, "session_hash", None) or "api")
        if token is None:
            return "Nothing is merging."
        token.cancel()
        return "Stopping…"

    stop.click(stop_merge, None, readout, api_visibility="private", concurrency_limit=None)


def _run(manager: PipelineManager, job: MergeRequest, token: CancelToken, model_dropdowns: list, own: list):
    """Merge in a thread, yielding the readout at its pace; then the new model in every list."""
    keep = [gr.update()] * (len(own) + len(model_dropdowns))
    running = BackgroundJob(lambda progress: manager.merge(job, progress=progress, cancel=token), "likeness-merge")
    for line in running.readouts("merging", "tensor"):
        yield line, *keep
    message = running.error_message()
    if message is not None:
        yield message, *keep
        return
    names = mergeable_models(manager)
    lists = [gr.Dropdown(choices=names, value=value if value in names else None) for value in (job.primary, job.secondary, job.tertiary)]
    yield result_text(running.result), *lists, *[gr.update(choices=model_choices(manager)) for _ in model_dropdowns]
