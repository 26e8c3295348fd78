"""The Experiments tab: vary up to three settings from the Generate tab's current values.

Out come a labelled image grid, a per-cell table (stage times, it/s, peak memory, cache hits, the
VAE dtype really used, PSNR/SSIM against a baseline cell), stage-time bars, per-step latency lines
and the exported files. The engine (`pipelines.experiments`) does the work in a thread; this tab
only collects the form, streams the progress and shows the result.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import threading

import gradio as gr
import pandas as pd

from pipelines.errors import LikenessError
from pipelines.experiments.plan import AXIS_NAMES, MAX_REPEATS, AxisSpec, Experiment, axis_choices, build_plan, cell_labels, values_text
from pipelines.experiments.axes import SETTINGS
from pipelines.experiments.report import export, grid_image, stage_bars, step_lines, table_rows
from pipelines.experiments.runner import run_experiment
from pipelines.face.options import MAX_PHOTOS
from pipelines.jobs import tagged
from pipelines.manager import PipelineManager
from ui import inputs
from ui.face_tab import DEFAULT_FACE, photo_paths
from ui.generate_tab import _coerce_form
from ui.jobs import Job, board_for, parallel_jobs
from ui.session import STOP_REPLIES, STOPPED_BEFORE_START, CancelRegistry, arm_then, session_id

log = logging.getLogger("likeness")
NO_AXIS = ""
AXIS_CHOICES = [("(none)", NO_AXIS)] + [(s.label, s.key) for s in SETTINGS.values()]
EMPTY_STATE = (
    "**Nothing run yet.** Pick a setting for at least one axis and its values, then **Run experiment**. "
    "Here you will then see:\n"
    "- the **grid** of images, labelled by axis values (X across, Y down, one block per Z value);\n"
    "- a **table** with one row per cell: stage times, it/s, peak memory, cache hits, the VAE dtype really used, "
    "and PSNR / SSIM against the baseline cell (wide: scroll it sideways);\n"
    "- **stage-time bars** per cell and **per-step latency** lines;\n"
    "- the **exported files**: grid PNG, CSV, JSON and the experiment definition, also saved under the outputs folder."
)
EXAMPLES = ("Lists and ranges as in A1111: `10,20,30` · `1-5` · `1-9 (+2)` · `0.5-1 [3]` · `\"a, b\", c` · sizes `512x768` · "
            "Prompt order: fragments of the prompt (`red, at dusk`), every order · Styles: style names, `None` for none")


def fill_values(manager: PipelineManager, key: str, model: str, current: str):
    """The axis's values box filled with every choice of its setting (the samplers of the Generate tab's model, the
    installed models, styles...); a setting without a list (numbers, prompts) keeps what was typed, with a note."""
    if not key:
        gr.Info("Choose the axis's setting first.")
        return current
    try:
        choices = axis_choices(key, manager, model)
    except LikenessError as error:
        gr.Warning(str(error))
        return current
    if not choices:
        gr.Info("This setting has no list of choices: type its values (a list or a range such as 10-30 (+10)).")
        return current
    return values_text(choices)


class ExperimentJob:
    """Runs the experiment in a worker thread; the handler polls its latest progress."""

    def __init__(self, manager: PipelineManager, plan, cancel, owner: str = ""):
        self.owner = owner  # the browser session (its cells are tagged with it)
        self.progress = None
        self.result = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(manager, plan, cancel), name="likeness-experiment", daemon=True)

    def _run(self, manager, plan, cancel) -> None:
        # The grid takes one turn on the GPU like any other job, so the A1111 API's progress and
        # interrupt see it, and an API job waits behind it (and it behind one). With Ray workers its
        # cells fan out to every worker but yield to other jobs waiting for one (`pipelines.jobs`).
        job = Job("browser", "experiment", cancel, steps=max(cell.request.steps for cell in plan.cells), batch_count=1)
        try:
            with tagged(owner=self.owner, source="browser", kind="experiment"), board_for(manager).turn(job):
                self.result = run_experiment(manager, plan, self._on_progress, cancel)
        except BaseException as error:  # handed to the UI thread, which turns it into a message
            self.error = error
        finally:
            self._done.set()

    def _on_progress(self, progress) -> None:
        self.progress = progress

    def start(self) -> "ExperimentJob":
        self._thread.start()
        return self

    def updates(self, poll_seconds: float = 0.25):
        """Yield the latest progress (or None) until the run ends."""
        while not self._done.wait(poll_seconds):
            yield self.progress


def progress_markdown(progress) -> str:
    if progress is None:
        return "Starting…"
    filled = round(20 * progress.fraction)
    return f"`{'█' * filled}{'░' * (20 - filled)}` {progress.describe()}"


def table_frame(rows: list[dict]) -> pd.DataFrame:
    """The table for display: an identical image's PSNR reads 'identical', empty values stay empty."""
    shown = []
    for row in rows:
        shown.append({k: _display(k, v) for k, v in row.items()})
    return pd.DataFrame(shown)


def _display(column: str, value):
    if value is None:
        return ""
    if column == "PSNR dB" and isinstance(value, float) and math.isinf(value):
        return "identical"
    return value


def experiment_from_form(axis_values: list, baseline, warmup, repeats, photos, id_weight, start_step, form: dict) -> Experiment:
    """The tab's inputs as an experiment definition (the same thing an experiment file holds)."""
    base = _coerce_form(form).to_dict()
    axes = [AxisSpec(setting, values or "") for setting, values in zip(axis_values[::2], axis_values[1::2]) if setting]
    paths = photo_paths(photos)
    face = {"photos": paths, "start_step": int(start_step)} if paths else None
    if face is not None and id_weight is not None:  # left out: each cell's model family's default (SDXL 0.8, FLUX.1 1)
        face["id_weight"] = float(id_weight)
    if repeats is None or float(repeats) != int(repeats):
        raise LikenessError("Repeats must be a whole number.")
    return Experiment(base, axes, baseline=int(baseline or 0), warmup=bool(warmup), repeats=int(repeats), face=face)


def build(manager: PipelineManager, settings, generate_form: dict, cancels: CancelRegistry, face_form: dict | None = None) -> dict:
    gr.Markdown("Starts from the **Generate** tab's current settings (and the **Face** tab's photo and PuLID controls); each "
                "axis varies one of them. Every cell uses the same seed (a random seed is drawn once). " + EXAMPLES)
    axis_inputs = []
    with gr.Row(elem_id="exp_axes"):
        for name in AXIS_NAMES:
            with gr.Column():
                setting = gr.Dropdown(AXIS_CHOICES, value=NO_AXIS, label=f"{name} axis", elem_id=f"exp_{name.lower()}_setting")
                values = gr.Textbox(label=f"{name} values", placeholder="e.g. 10,20,30", elem_id=f"exp_{name.lower()}_values")
                fill = gr.Button("Fill in every choice", size="sm", elem_id=f"exp_{name.lower()}_fill")  # A1111's 📒 button
                fill.click(lambda key, model, current: fill_values(manager, key, model, current), [setting, generate_form["model"], values],
                           values, api_visibility="private")  # queued: its notes show as toasts
                axis_inputs += [setting, values]
    with gr.Row(elem_id="exp_options"):
        baseline = gr.Dropdown([("first cell", 0)], value=0, label="Baseline cell (PSNR / SSIM against it)", elem_id="exp_baseline", scale=2)
        warmup = gr.Checkbox(True, label="Warm-up run per model (not timed)", elem_id="exp_warmup")
        repeats = inputs.Slider(1, MAX_REPEATS, value=1, step=1, label="Repeats (medians)", elem_id="exp_repeats")
        confirm = gr.Checkbox(False, label=f"Run grids above {settings.experiment_confirm_cells} cells",
                              info="the limit is set in Settings", elem_id="exp_confirm")
    with gr.Accordion("Face reference (PuLID axes, ArcFace similarity)", open=False):
        with gr.Row():
            photos = gr.File(label=f"Reference photos (1-{MAX_PHOTOS})", file_count="multiple", file_types=["image"], elem_id="exp_face_photos")
            id_weight = inputs.Slider(0, 5, value=face_form["id_weight"].value if face_form else 0.8, step=0.05, label="PuLID weight",
                                      elem_id="exp_face_weight")
            start_step = inputs.Slider(0, 10, value=0, step=1, label="PuLID start step", elem_id="exp_face_start")
    if face_form is not None:  # follow the Face tab: photos and controls chosen there apply here too
        for name, component in (("photos", photos), ("id_weight", id_weight), ("start_step", start_step)):
            face_form[name].change(lambda value: value, face_form[name], component, api_visibility="private")
    with gr.Row(elem_id="exp_buttons"):
        run_button = gr.Button("Run experiment", variant="primary", elem_id="exp_run", scale=0, min_width=280)
        # Secondary and small: stopping a grid is the exception, and must not look like the main action.
        cancel_button = gr.Button("Cancel", variant="secondary", size="sm", elem_id="exp_cancel", scale=0, min_width=100)
    progress = gr.Markdown("Ready.", elem_id="exp_progress")
    # Until a run has results, one note says what will appear; the result components stay hidden
    # (an empty Dataframe shows headers "1 2 3", an empty File looks like an upload drop zone).
    empty = gr.Markdown(EMPTY_STATE, elem_id="exp_empty")
    grid = gr.Image(label="Grid", format="png", interactive=False, elem_id="exp_grid", visible=False)
    table = gr.Dataframe(label="Cells (medians over the repeats; scroll sideways for PSNR / SSIM and the baseline)", interactive=False,
                         wrap=True, elem_id="exp_table", visible=False)
    with gr.Row():
        stage_plot = gr.BarPlot(x="cell", y="seconds", color="stage", title="Stage times per cell", x_label_angle=-30,
                                elem_id="exp_stage_plot", visible=False)
        step_plot = gr.LinePlot(x="step", y="seconds", color="cell", title="Per-step latency", elem_id="exp_step_plot", visible=False)
    files = gr.File(label="Export: grid PNG, CSV, JSON, experiment definition", file_count="multiple", interactive=False, elem_id="exp_files",
                    visible=False)

    def on_axes_change(*axis_values):
        """Offer the cells as baseline choices once the axes parse; keep the old choice while they do not."""
        experiment = Experiment({}, [AxisSpec(s, v or "") for s, v in zip(axis_values[::2], axis_values[1::2]) if s])
        try:
            labels = cell_labels(experiment)
        except LikenessError:
            return gr.update()
        return gr.update(choices=[(label, i) for i, label in enumerate(labels)], value=0)

    for component in axis_inputs:
        component.change(on_axes_change, axis_inputs, baseline, api_visibility="private", queue=False)

    # The request first: Gradio injects gr.Request only into positional parameters. Every API parameter
    # is named: the experiment's controls, then the request's own field names (`inputs_kwargs`).
    def run(request: gr.Request, x_setting=NO_AXIS, x_values=None, y_setting=NO_AXIS, y_values=None, z_setting=NO_AXIS, z_values=None,
            baseline_cell=0, warm=True, repeat_count=1, confirmed=False, face_photos=None, face_weight=DEFAULT_FACE.id_weight,
            face_start=DEFAULT_FACE.start_step, **form):
        session = session_id(request)
        unchanged = (gr.update(),) * 5
        try:
            experiment = experiment_from_form([x_setting, x_values, y_setting, y_values, z_setting, z_values], baseline_cell, warm,
                                              repeat_count, face_photos, face_weight, face_start, form)
            plan = build_plan(experiment, manager)
        except (LikenessError, TypeError, ValueError) as error:
            cancels.forget_armed(session)
            yield (f"⚠ {error}",) + unchanged
            return
        limit = settings.experiment_confirm_cells
        if len(plan.cells) > limit and not confirmed:
            cancels.forget_armed(session)
            yield (f"⚠ This grid has {len(plan.cells)} cells ({plan.total_runs} generations), above the limit of {limit} set in "
                   f"Settings. Tick “Run grids above {limit} cells” to confirm, then run again.",) + unchanged
            return
        token = cancels.claim(session)
        if token.cancelled:  # Cancel was pressed while this run waited in the queue
            cancels.forget(session, token)
            yield (STOPPED_BEFORE_START,) + unchanged
            return
        job = ExperimentJob(manager, plan, token, owner=session).start()
        try:
            for latest in job.updates():
                yield (progress_markdown(latest),) + unchanged
        finally:
            if job.result is None and job.error is None:
                token.cancel()  # the browser went away: stop at the next step
            cancels.forget(session, token)
        if job.error is not None:
            log.error("experiment failed", exc_info=job.error)
            yield (f"⚠ {job.error if isinstance(job.error, LikenessError) else 'Internal error: ' + repr(job.error)}",) + unchanged
            return
        yield show_result(job.result)

    def show_result(result):
        folder = manager.config.outputs_dir / "experiments" / dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        notes = "".join(f"  \n⚠ {note}" for note in result.notes)
        try:
            paths = export(result, folder)
            exported = [str(p) for p in paths.values()]
            saved = f" Files in `{folder}`."
        except OSError as error:
            exported, saved = None, f"  \n⚠ Could not write the files to {folder}: {error.strerror or error}."
        order = [c.label for c in result.plan.cells]
        bars, lines = pd.DataFrame(stage_bars(result)), pd.DataFrame(step_lines(result))
        return (
            f"**{result.status()}** Seed {result.plan.seed}; timings on {result.device or 'the device'}, peak memory is "
            f"{result.memory_kind or 'not measured'}.{saved}{notes}",
            grid_image(result),
            table_frame(table_rows(result)),
            gr.update(value=bars, sort=order) if len(bars) else gr.update(value=None),
            gr.update(value=lines) if len(lines) else gr.update(value=None),
            exported,
        )

    run_event = arm_then(run_button.click, cancels, progress, manager).then(
        run, [*axis_inputs, baseline, warmup, repeats, confirm, photos, id_weight, start_step], [progress, grid, table, stage_plot, step_plot, files],
        inputs_kwargs=generate_form, api_name="experiment", concurrency_id="gpu", concurrency_limit=parallel_jobs(manager),
    )
    # Once a run has results, they replace the empty-state note (a refused or failed run keeps it). A
    # separate step, so the experiment API returns plain values, not visibility updates.
    results = [grid, table, stage_plot, step_plot, files]
    run_event.then(lambda image: (gr.update(visible=image is None), *[gr.update(visible=image is not None)] * len(results)),
                   grid, [empty, *results], api_visibility="private", queue=False)

    def cancel_experiment(request: gr.Request = None):
        state = cancels.signal(session_id(request))
        return "Stopping after the current step; the finished cells are kept…" if state == "running" else STOP_REPLIES[state]

    cancel_button.click(cancel_experiment, None, progress, api_name="cancel_experiment", concurrency_limit=None)
    return {"run_event": run_event, "grid": grid, "table": table}
