"""Generate's *Prompts from file or textbox* panel (A1111's script of that name): one generation per line over the
form's settings. The lines are read and every request checked before the first runs (pipelines/prompt_lines.py); the
readout names the line in hand, the gallery fills as lines finish, Stop ends the list."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipelines.errors import InvalidRequest, LikenessError
from pipelines.manager import PipelineManager
from pipelines.prompt_lines import POSITIONS, check_requests, line_requests, parse_lines, read_prompt_file
from ui import generation_form
from ui.img2img_tab import upload_path
from ui.jobs import parallel_jobs
from ui.session import STOPPED_BEFORE_START, CancelRegistry, arm_then, cache_namespace, result_markdown, session_id, stream_generation


@dataclass
class LinesPanel:
    text: gr.Textbox
    upload: gr.File
    iterate_seed: gr.Checkbox
    same_seed: gr.Checkbox
    position: gr.Radio
    run: gr.Button


def build_panel() -> LinesPanel:
    with gr.Accordion("Prompts from file or textbox (A1111's script)", open=False, elem_id="lines_panel"):
        gr.Markdown("One generation per line, over the settings above: a prompt, or A1111's options "
                    "(`--prompt \"a cat\" --negative_prompt dog --steps 30 --seed 5 --sampler_name Euler --width 768`). "
                    "Every line is checked before the first runs.")
        with gr.Row():
            iterate_seed = gr.Checkbox(False, label="Iterate seed every line", elem_id="lines_iterate_seed")
            same_seed = gr.Checkbox(False, label="Use same random seed for all lines", elem_id="lines_same_seed")
            position = gr.Radio(list(POSITIONS), value=POSITIONS[0], label="Insert prompts at the", elem_id="lines_position")
        text = gr.Textbox(label="List of prompt inputs", lines=4, elem_id="lines_text")
        with gr.Row():
            upload = gr.File(label="Upload prompt inputs (.txt)", file_types=[".txt"], elem_id="lines_upload", height=90, scale=3)
            run = gr.Button("Generate each line", variant="primary", elem_id="lines_generate", scale=1)
    return LinesPanel(text, upload, iterate_seed, same_seed, position, run)


def read_upload(raw) -> tuple[str, str]:
    """The uploaded list's text for the box, or (unchanged, a message)."""
    path = upload_path(raw)
    if not path:
        return gr.update(), ""
    try:
        text = read_prompt_file(path)
    except InvalidRequest as error:
        return gr.update(), f"⚠ {error}"
    return "\n".join(line.strip() for line in text.splitlines()), ""


def wire(panel: LinesPanel, manager: PipelineManager, cancels: CancelRegistry, form: dict, readout, preview, gallery, breakdown,
         last_seed) -> None:
    panel.upload.upload(read_upload, panel.upload, [panel.text, readout], preprocess=False, api_visibility="private", queue=False)

    # The request first: Gradio injects gr.Request only into positional parameters; the form by its field names.
    def run_lines(request: gr.Request, lines_text="", iterate_seed=False, same_seed=False, prompt_position="start", **values):
        session = session_id(request)
        try:
            base = generation_form.coerce_form(values)
            generation_form.check_upscaler(manager, base)
            lines = parse_lines(lines_text)
            requests = line_requests(base, lines, bool(iterate_seed), bool(same_seed), prompt_position)
            check_requests(lines, requests, lambda name: manager.entry(name).family)
        except (LikenessError, TypeError, ValueError) as error:
            cancels.forget_armed(session)
            yield f"⚠ {error}", None, gr.update(), "", gr.update()
            return
        notes = [note for line in lines for note in line.notes]
        images, result = [], None
        for number, (line, one) in enumerate(zip(lines, requests), 1):
            heading = f"**Line {number} of {len(lines)}:** {one.prompt[:80]}  \n"
            for update in stream_generation(manager, one, cancels, session, namespace=cache_namespace(request)):
                if update.message:
                    stopped = update.message in ("Stopped.", STOPPED_BEFORE_START)
                    head = f"Stopped after {number - 1} of {len(lines)} lines." if stopped else f"⚠ Line {line.number}: {update.message}"
                    yield head, None, images or gr.update(), "", gr.update()
                    return
                if update.result is None:
                    yield heading + update.readout, update.preview_output(), gr.update(), gr.update(), gr.update()
                    continue
                result = update.result
                images += [(item.path or item.image, f"line {line.number} · seed {item.seed}") for item in result.images]
                yield heading + update.readout, None, images, gr.update(), gr.update()
        done = f"**Done: {len(lines)} lines, {len(images)} images.**" + "".join(f"  \n⚠ {note}" for note in notes)
        yield done, None, images, result_markdown(result), result.seeds[0]

    arm_then(panel.run.click, cancels, readout, manager).then(
        run_lines, [panel.text, panel.iterate_seed, panel.same_seed, panel.position], [readout, preview, gallery, breakdown, last_seed],
        inputs_kwargs=form, api_name="generate_lines", concurrency_id="gpu", concurrency_limit=parallel_jobs(manager), preprocess=False)
