"""Running a plan's cells through the one pipeline manager, with progress, cancel and medians.

Each run is an ordinary `manager.generate` call (the same validation, hooks, telemetry and
metadata as the Generate tab), with the exact-repeat latent cache bypassed so every repeat really
denoises. The prompt memo stays on, as in normal use; the table reports its hits. A warm-up run
per model (optional) takes the model load and first-call costs out of the measured cells.
Cancelling keeps the cells already finished: the result is partial and says so.
"""
from __future__ import annotations

import datetime as dt
import logging
import statistics
import threading
from dataclasses import dataclass, field
from typing import Callable

from pipelines.errors import GenerationCancelled, LikenessError
from pipelines.experiments.fidelity import ArcFaceScorer, Fidelity, compare
from pipelines.experiments.plan import Cell, Plan
from pipelines.generate import CancelToken
from pipelines.jobs import carrying_tag, tagged
from pipelines.request import GenerationResult
from pipelines.telemetry import PreviewReady, StepDone

log = logging.getLogger("likeness")


@dataclass(frozen=True)
class ExperimentProgress:
    """Where the whole grid stands; sent at every run start and every denoise step."""

    runs_done: int
    runs_total: int
    cell_label: str
    phase: str  # "warm-up" or "run 2 of 3"
    step: int = 0
    steps: int = 0
    preview: object = None  # the running cell's latest live preview (PIL; cheap or TAESD, as Settings says)

    @property
    def fraction(self) -> float:
        within = self.step / self.steps if self.steps else 0.0
        return min(1.0, (self.runs_done + within) / max(self.runs_total, 1))

    def describe(self) -> str:
        step = f" · step {self.step}/{self.steps}" if self.steps else ""
        return f"{self.fraction:.0%} · run {min(self.runs_done + 1, self.runs_total)} of {self.runs_total} · {self.cell_label} · {self.phase}{step}"


@dataclass
class CellResult:
    """One cell's measured runs (medians over them), or the error that stopped it."""

    cell: Cell
    runs: list[GenerationResult] = field(default_factory=list)
    error: str | None = None

    @property
    def finished(self) -> bool:
        return bool(self.runs) and self.error is None

    @property
    def image(self):
        return self.runs[0].images[0].image if self.runs else None

    @property
    def infotext(self) -> str:
        return self.runs[0].images[0].infotext if self.runs else ""

    def stage_seconds(self) -> dict[str, float]:
        """Median seconds per stage over the runs (a stage missing from a run counts as 0 there)."""
        stages = list(dict.fromkeys(name for run in self.runs for name in run.stage_seconds))
        return {name: statistics.median(run.stage_seconds.get(name, 0.0) for run in self.runs) for name in stages}

    def total_seconds(self) -> float | None:
        return statistics.median(run.total_seconds for run in self.runs) if self.runs else None

    def step_seconds(self) -> list[float]:
        """Median latency of each step position over the runs."""
        if not self.runs:
            return []
        length = min(len(run.step_seconds) for run in self.runs)
        return [statistics.median(run.step_seconds[i] for run in self.runs) for i in range(length)]

    def iterations_per_second(self) -> float | None:
        rates = [len(run.step_seconds) / sum(run.step_seconds) for run in self.runs if run.step_seconds and sum(run.step_seconds) > 0]
        return statistics.median(rates) if rates else None

    def peak_memory_bytes(self) -> int | None:
        peaks = [run.peak_memory_bytes for run in self.runs if run.peak_memory_bytes is not None]
        return max(peaks) if peaks else None

    def vae_dtype(self) -> str:
        """What the decode really ran in; several labels if the runs differed (a NaN fallback)."""
        return " / ".join(dict.fromkeys(run.vae_dtype for run in self.runs))

    def cache_hits(self) -> str:
        """Prompt memo / latent cache hits and DeepCache's cached UNet calls, over the runs."""
        parts = []
        for name in dict.fromkeys(n for run in self.runs for n in run.cache_notes):
            hits = sum(1 for run in self.runs if str(run.cache_notes.get(name, "")).startswith("hit"))
            parts.append(f"{name} {hits}/{len(self.runs)} hit")
        deepcache = [run.hook_stats["deepcache"] for run in self.runs if "deepcache" in run.hook_stats]
        if deepcache:
            stats = deepcache[0]
            parts.append(f"DeepCache {stats['cached_steps']}/{stats['cached_steps'] + stats['full_steps']} UNet calls cached")
        for name, stats in (self.runs[0].hook_stats.items() if self.runs else ()):
            if name != "deepcache" and isinstance(stats, dict):
                parts.append(f"{name} " + " ".join(f"{k}={v}" for k, v in stats.items()))
        return "; ".join(parts)


@dataclass
class ExperimentResult:
    plan: Plan
    cells: dict[int, CellResult] = field(default_factory=dict)  # by grid index; only cells that ran
    cancelled: bool = False
    fidelity: dict[int, Fidelity] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: dt.datetime.now().isoformat(timespec="seconds"))
    device: str = ""
    memory_kind: str = ""

    @property
    def finished_cells(self) -> int:
        return sum(1 for c in self.cells.values() if c.finished)

    def status(self) -> str:
        total = len(self.plan.cells)
        if self.cancelled:
            return f"Stopped: {self.finished_cells} of {total} cells finished (a partial result)."
        failed = sum(1 for c in self.cells.values() if c.error)
        return f"Done: {self.finished_cells} of {total} cells" + (f", {failed} failed" if failed else "") + "."


ProgressListener = Callable[[ExperimentProgress], None]


def run_experiment(manager, plan: Plan, on_progress: ProgressListener | None = None, cancel: CancelToken | None = None) -> ExperimentResult:
    """Run every cell; a stop keeps the finished cells (`result.cancelled`).

    With several workers (`manager.parallel_jobs`, `--workers ray`) the cells run in that many lanes
    at once, each lane one model's cells in plan order (`plan_lanes`), so each worker loads a model
    once; a cell's request, seed included, is the same whichever lane runs it. The cells are tagged
    `yields` (`pipelines.jobs`): the experiment holds one turn in the user-facing queue, and another
    job waiting for a worker goes before its next cell, so it is not starved behind the grid."""
    cancel = cancel or CancelToken()
    result = ExperimentResult(plan, notes=list(dict.fromkeys(note for cell in plan.cells for note in cell.notes)))
    lanes = plan_lanes(plan, getattr(manager, "parallel_jobs", 1))
    warmups = sum(len(_lane_models(plan, lane)) for lane in lanes) if plan.warmup_models else 0  # each lane warms its own worker
    progress = _Progress(plan.total_runs - len(plan.warmup_models) + warmups, on_progress)
    if len(lanes) == 1:
        _run_lane(manager, plan, lanes[0], result, progress, cancel)
    else:
        threads = [threading.Thread(target=carrying_tag(_run_lane), args=(manager, plan, lane, result, progress, cancel),
                                    name=f"likeness-experiment-lane-{number}", daemon=True) for number, lane in enumerate(lanes, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if result.cancelled:
        result.cells = {i: c for i, c in sorted(result.cells.items()) if c.runs or c.error}
    else:
        result.cells = dict(sorted(result.cells.items()))  # grid order, whichever lane finished first
    repeats = plan.experiment.repeats
    for cell in result.cells.values():
        if cell.error is None and len(cell.runs) < repeats:
            cell.error = f"stopped after {len(cell.runs)} of {repeats} runs"
    measure_fidelity(manager, result)
    return result


def plan_lanes(plan: Plan, count: int) -> list[list[int]]:
    """The run order split into at most `count` lanes that can run at once, grouped by model.

    With at least as many models as lanes, whole models go to the lane with the fewest cells (largest
    first). With fewer, each model gets lanes in proportion to its cells (at least one) and its cells
    are cut into that many consecutive runs, so a lane never switches models."""
    groups: dict[str, list[int]] = {}
    for index in plan.run_order:
        groups.setdefault(plan.cells[index].request.model, []).append(index)
    if count <= 1 or len(plan.run_order) <= 1:
        return [list(plan.run_order)]
    if len(groups) >= count:
        lanes: list[list[int]] = [[] for _ in range(count)]
        for cells in sorted(groups.values(), key=len, reverse=True):
            min(lanes, key=len).extend(cells)
        return [lane for lane in lanes if lane]
    share = {model: 1 for model in groups}
    for _ in range(count - len(groups)):  # each spare lane to the model with the most cells per lane
        model = max(groups, key=lambda m: len(groups[m]) / share[m])
        share[model] += 1
    lanes = []
    for model, cells in groups.items():
        parts = min(share[model], len(cells))
        size, extra = divmod(len(cells), parts)
        start = 0
        for part in range(parts):
            end = start + size + (1 if part < extra else 0)
            lanes.append(cells[start:end])
            start = end
    return lanes


def _lane_models(plan: Plan, lane: list[int]) -> list[str]:
    return list(dict.fromkeys(plan.cells[index].request.model for index in lane))


def _run_lane(manager, plan: Plan, lane: list[int], result: ExperimentResult, progress: "_Progress", cancel: CancelToken) -> None:
    """One lane's cells, in order, with a warm-up run per model when the plan has them. A stop here
    stops the other lanes too (the token is shared)."""
    to_warm = _first_cell_per_model(plan, lane) if plan.warmup_models else set()
    try:
        with tagged(kind="experiment cell", yields=True):
            for index in lane:
                _run_cell(manager, plan, index, result, progress, cancel, warm=index in to_warm)
    except GenerationCancelled:
        result.cancelled = True
        cancel.cancel()


def _first_cell_per_model(plan: Plan, lane: list[int]) -> set[int]:
    """Each model's first cell in the lane: the one that warms the model up."""
    first: dict[str, int] = {}
    for index in lane:
        first.setdefault(plan.cells[index].request.model, index)
    return set(first.values())


def _run_cell(manager, plan: Plan, index: int, result: ExperimentResult, progress: "_Progress", cancel: CancelToken, warm: bool) -> None:
    cell = plan.cells[index]
    repeats = plan.experiment.repeats
    outcome = CellResult(cell)
    result.cells[index] = outcome
    if warm:
        run = _run_once(manager, cell, "warm-up", progress, cancel)
        if isinstance(run, str):
            outcome.error = run
            progress.skip(repeats)
            return
    for repeat in range(repeats):
        run = _run_once(manager, cell, f"run {repeat + 1} of {repeats}", progress, cancel)
        if isinstance(run, str):
            outcome.error = run
            progress.skip(repeats - repeat - 1)
            break
        outcome.runs.append(run)
        result.device, result.memory_kind = run.device, run.memory_kind
    if not outcome.runs and not outcome.error:
        result.cells.pop(index, None)


class _Progress:
    """Runs done over the whole grid; lanes running at once report through the same one."""

    def __init__(self, total: int, listener: ProgressListener | None):
        self.total = total
        self.done = 0
        self.listener = listener
        self._lock = threading.Lock()

    def send(self, label: str, phase: str, step: int = 0, steps: int = 0, preview=None) -> None:
        if self.listener:
            self.listener(ExperimentProgress(self.done, self.total, label, phase, step, steps, preview))

    def skip(self, runs: int) -> None:
        with self._lock:
            self.done += runs


def _run_once(manager, cell: Cell, phase: str, progress: _Progress, cancel: CancelToken) -> GenerationResult | str:
    """One generation; a str is the error that stopped this cell. A stop raises GenerationCancelled."""
    if cancel.cancelled:
        raise GenerationCancelled()
    progress.send(cell.label, phase)

    latest = {"step": 0, "steps": 0, "preview": None}  # a preview follows its step's StepDone

    def on_event(event) -> None:
        if isinstance(event, StepDone):
            latest.update(step=event.index, steps=event.total)
        elif isinstance(event, PreviewReady):
            latest["preview"] = event.image
        else:
            return
        progress.send(cell.label, phase, latest["step"], latest["steps"], latest["preview"])

    try:
        run = manager.generate(cell.request, listener=on_event, cancel=cancel, face=cell.face, reuse_latents=False)
    except GenerationCancelled:
        raise
    except LikenessError as error:
        progress.skip(1)
        return str(error)
    except Exception as error:  # one broken cell must not lose the others
        log.exception("experiment cell %s failed", cell.label)
        progress.skip(1)
        return f"Internal error: {error.__class__.__name__}: {error}"
    progress.skip(1)
    return run


def measure_fidelity(manager, result: ExperimentResult) -> None:
    """PSNR/SSIM of each finished cell against the baseline; ArcFace cosine when a face was used."""
    baseline = result.cells.get(result.plan.baseline)
    if baseline is None or baseline.image is None:
        result.notes.append(f"Fidelity not measured: the baseline cell ({result.plan.cells[result.plan.baseline].label}) did not finish.")
        return
    for index, cell in result.cells.items():
        if cell.image is not None:
            result.fidelity[index] = compare(baseline.image, cell.image)
    face = result.plan.cells[result.plan.baseline].face
    if face is None:
        return
    scorer = ArcFaceScorer(manager.config.models_dir, face.photos)
    try:
        if scorer.skip_note:
            result.notes.append(scorer.skip_note)
            return
        missed = []
        for index, fidelity in result.fidelity.items():
            score = scorer.score(result.cells[index].image)
            if score is None:
                missed.append(result.cells[index].cell.label)
            result.fidelity[index] = Fidelity(fidelity.psnr_db, fidelity.ssim, score, fidelity.note)
        if missed:
            result.notes.append(f"ArcFace similarity: no face found in {', '.join(missed)}.")
    finally:
        scorer.release()
