"""Running one generation for the UI: the engine works in a thread, the handler streams its events."""
from __future__ import annotations

import dataclasses

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import gradio as gr

from pipelines.errors import GenerationCancelled, LikenessError
from pipelines.generate import CancelToken
from pipelines.jobs import tagged
from pipelines.manager import PipelineManager
from pipelines.request import GenerationRequest, GenerationResult
from pipelines.telemetry import Event, Notice, PreviewReady, StageEnded, StageStarted, StepDone, format_step
from ui.jobs import Job, board_for
from ui.workers_view import has_workers, jobs_of, running_text, worker_of_session


@dataclass
class Readout:
    """What the live readout shows; rebuilt from events, rendered as Markdown."""

    stage: str = "waiting"
    last_step: StepDone | None = None
    started: float = field(default_factory=time.perf_counter)
    stages: dict[str, float] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    worker: str = ""  # with Ray workers: the worker running the job ("worker-2 (cuda)")

    def apply(self, event: Event) -> None:
        if isinstance(event, StageStarted):
            self.stage = event.stage
        elif isinstance(event, StageEnded):
            self.stages[event.stage] = self.stages.get(event.stage, 0.0) + event.seconds
        elif isinstance(event, StepDone):
            self.last_step = event
        elif isinstance(event, Notice):
            self.notices.append(("⚠ " if event.level == "warning" else "") + event.text)

    def markdown(self) -> str:
        elapsed = time.perf_counter() - self.started
        lines = [f"**{self.stage}** · elapsed {elapsed:.1f} s" + (f" · on {self.worker}" if self.worker else "")]
        if self.last_step:
            lines.append(format_step(self.last_step))
        lines += self.notices[-4:]
        return "  \n".join(lines)


def result_markdown(result: GenerationResult) -> str:
    """The after-run breakdown: per-stage seconds as bars with each stage's note (from RAM, memoized, prompt editing...),
    peak memory, total."""
    longest = max(result.stage_seconds.values(), default=0) or 1
    rows = ["| stage | seconds | |", "|---|---:|---|"]
    for stage, seconds in result.stage_seconds.items():
        rows.append(f"| {stage} | {seconds:.2f} | {'█' * max(1, round(20 * seconds / longest))} |")
    # Each stage's note under the table, one line each (a fourth column squeezed the table in the narrow result column).
    notes = [f"- **{stage}**: {note}" for stage, note in result.stage_details.items() if note and stage in result.stage_seconds]
    summary = (
        f"**Done in {result.total_seconds:.2f} s** · {result.denoise_summary()} · peak memory ({result.memory_kind}) {result.peak_memory_bytes / 2**30:.2f} GiB · "
        f"{result.device}, denoiser {result.denoiser_dtype}, VAE {result.vae_dtype} · seeds {', '.join(map(str, result.seeds))}"
    )
    warnings = "".join(f"  \n⚠ {w}" for w in result.warnings)
    deepcache = result.hook_stats.get("deepcache")
    if deepcache:
        summary += f" · DeepCache: {deepcache['cached_steps']} of {deepcache['cached_steps'] + deepcache['full_steps']} UNet calls cached"
    if result.cache_notes:
        summary += " · caches: " + ", ".join(f"{name} {note}" for name, note in result.cache_notes.items())
    return summary + warnings + "\n\n" + "\n".join(rows) + ("\n\n" + "\n".join(notes) if notes else "")


_DONE = object()
# The live readout's pace: a person reads a step count a few times a second at most, and each update costs
# CPU in the server and the browser that the denoiser shares on a small machine.
UPDATE_EVERY_S = 0.25


class GenerationSession:
    """Runs `manager.generate` in a worker thread and hands its events to the caller as they come."""

    def __init__(self, manager: PipelineManager, request: GenerationRequest, cancel: CancelToken, face=None, owner: str = ""):
        self.manager = manager
        self.owner = owner  # the browser session: the queue readouts tell "yours" from others'
        self.request = request
        self.cancel = cancel
        self.face = face
        self.events: "queue.Queue" = queue.Queue()
        self.result: GenerationResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="likeness-generate", daemon=True)

    def _run(self) -> None:
        try:
            # One GPU job at a time, shared with the A1111 API: while another job holds it, the readout says so.
            kind = "txt2img" if self.request.init_image is None else "img2img"  # A1111's job names (inpaint is img2img)
            job = Job.for_request("browser", kind, self.request, self.cancel)
            with tagged(owner=self.owner, source="browser", kind=kind), board_for(self.manager).turn(job, on_wait=self._waiting):
                self.result = self.manager.generate(self.request, listener=self.events.put, cancel=self.cancel, face=self.face)
        except BaseException as error:  # handed to the UI thread, which turns it into a message
            self.error = error
        finally:
            self.events.put(_DONE)

    def _waiting(self, holder: str) -> None:
        self.events.put(StageStarted(f"waiting for the GPU (held by {holder})", time.perf_counter()))

    def start(self) -> "GenerationSession":
        self._thread.start()
        return self

    def stream(self, every: float = UPDATE_EVERY_S):
        """Yield lists of events as they arrive, at most one list per `every` seconds (an empty one when none
        came, so a consumer that went away is noticed), and the rest when the generation ends.

        Each list becomes one page update, and on a machine of few cores the browser drawing it and Gradio
        sending it take the CPU the denoiser needs: on 2 cores, an update per step made the demo's 100 steps
        take 0.35 s each instead of 0.08 s (see UPDATE_EVERY_S)."""
        batch: list = []
        due = time.monotonic() + every
        while True:
            try:
                item = self.events.get(timeout=max(0.0, due - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _DONE:
                yield batch
                return
            if item is not None:
                batch.append(item)
            if time.monotonic() >= due:
                yield batch
                batch = []
                due = time.monotonic() + every

    def error_message(self) -> str | None:
        if self.error is None:
            return None
        if isinstance(self.error, GenerationCancelled):
            return "Stopped."
        if isinstance(self.error, LikenessError):
            return str(self.error)
        return f"Internal error: {self.error.__class__.__name__}: {self.error}. The app keeps running; see the console log."


class BackgroundJob:
    """A long engine call other than a generation (an Extras upscale, a checkpoint merge) in a thread: `work`
    gets a `progress(done, total)` callback; `readouts` yields the live line at the readout's pace until it ends."""

    def __init__(self, work: Callable[[Callable[[int, int], None]], object], name: str):
        self.result = None
        self.error: BaseException | None = None
        self._progress: "queue.Queue" = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._started = time.perf_counter()
        self._thread.start()

    def _run(self, work) -> None:
        try:
            self.result = work(lambda done, total: self._progress.put((done, total)))
        except BaseException as error:  # handed to the UI thread, which turns it into a message
            self.error = error

    def readouts(self, label: str, unit: str):
        """'**upscale** · tile 3/12 · elapsed 1.2 s', every UPDATE_EVERY_S while the call runs."""
        latest = None
        while self._thread.is_alive():
            self._thread.join(UPDATE_EVERY_S)
            while not self._progress.empty():
                latest = self._progress.get()
            where = f" · {unit} {latest[0]}/{latest[1]}" if latest else ""
            yield f"**{label}**{where} · elapsed {time.perf_counter() - self._started:.1f} s"

    def error_message(self) -> str | None:
        """None when it finished; a Stop's own sentence; ⚠ and the reason otherwise (no traceback)."""
        if self.error is None:
            return None
        if isinstance(self.error, GenerationCancelled):
            return str(self.error)
        if isinstance(self.error, LikenessError):
            return f"⚠ {self.error}"
        return f"⚠ Internal error: {self.error.__class__.__name__}: {self.error}. The app keeps running; see the console log."


class CancelRegistry:
    """The Stop button's way to reach the run of its own browser session, queued or running.

    A click first *arms* a token for its session, outside the queue, before its job waits for the
    GPU; the job *claims* that token when it starts. So a Stop pressed while the job still waits in
    the queue is not lost: the job finds its token cancelled and ends before loading anything.
    """

    def __init__(self) -> None:
        self._tokens: dict[str, CancelToken] = {}
        self._running: set[int] = set()  # ids of the tokens whose job has started
        self._armed_at: dict[str, float] = {}  # when each session's job joined the queue: the queue's order
        self._lock = threading.Lock()

    def arm(self, session: str) -> CancelToken:
        """A fresh token for the job this session is about to queue (it replaces an older one)."""
        with self._lock:
            token = self._tokens[session] = CancelToken()
            self._armed_at[session] = time.monotonic()
            return token

    def queue_position(self, session: str) -> int | None:
        """This session's place among the browser jobs still waiting (1 = next), or None when it has none waiting.

        Jobs armed more than QUEUE_FORGET_S ago and never started (a page closed while queued) do not count."""
        with self._lock:
            if not self._is_waiting(session):
                return None
            now, mine = time.monotonic(), self._armed_at[session]
            ahead = [other for other in self._tokens if other != session and self._is_waiting(other)
                     and now - QUEUE_FORGET_S < self._armed_at[other] < mine]
            return len(ahead) + 1

    def _is_waiting(self, session: str) -> bool:
        token = self._tokens.get(session)
        return token is not None and id(token) not in self._running and not token.cancelled and session in self._armed_at

    def claim(self, session: str) -> CancelToken:
        """The token of the job that starts now: the armed one, else a fresh one (API calls arm nothing)."""
        with self._lock:
            token = self._tokens.get(session)
            if token is None or id(token) in self._running:
                token = self._tokens[session] = CancelToken()
            self._running.add(id(token))
            return token

    def signal(self, session: str, skip: bool = False) -> str | None:
        """Stop (or skip the current batch of) this session's job: "running", "queued", or None when there is none."""
        with self._lock:
            token = self._tokens.get(session)
            state = None if token is None else "running" if id(token) in self._running else "queued"
        if token is None:
            return None
        if not skip:
            token.cancel()
        elif state == "running":  # a queued job has no batch to skip yet
            token.skip()
        return state

    def forget_armed(self, session: str) -> None:
        """The armed job will not run (its form was refused): a later Stop must not claim to cancel it."""
        with self._lock:
            token = self._tokens.get(session)
            if token is not None and id(token) not in self._running:
                del self._tokens[session]
                self._armed_at.pop(session, None)

    def forget(self, session: str, token: CancelToken) -> None:
        with self._lock:
            self._running.discard(id(token))
            if self._tokens.get(session) is token:
                del self._tokens[session]
                self._armed_at.pop(session, None)


STOP_REPLIES = {
    "running": "Stopping at the next step…",
    "queued": "Stopped before it started: the run was still waiting in the queue.",
    None: "Nothing is running.",
}
SKIP_REPLIES = {
    "running": "Skipping the current batch…",
    "queued": "Nothing to skip yet: the run is still waiting in the queue (Stop cancels it).",
    None: "Nothing is running.",
}
STOPPED_BEFORE_START = "Stopped before it started."
QUEUE_POLL_S = 1.0  # how often a waiting job's readout is refreshed
QUEUE_FORGET_S = 3600.0  # a job armed this long ago that never started is not counted as ahead


def session_id(request) -> str:
    """Gradio's per-browser-tab session; "api" for a caller without one."""
    return getattr(request, "session_hash", None) or "api"


def arm_then(listener, cancels: CancelRegistry, readout: gr.Markdown | None = None, manager: PipelineManager | None = None):
    """`listener` (e.g. `button.click`) arms a cancel token for the session at once, outside the queue;
    chain the queued GPU job with `.then(...)`, so Stop reaches it even while it waits.

    With a `readout` (and the `manager`), the readout says where the job stands in the queue and which job runs
    ahead of it, every QUEUE_POLL_S seconds until the job starts (Gradio's own estimate is only a guess from past runs).
    """
    if readout is None:
        def arm(request: gr.Request):
            cancels.arm(session_id(request))

        return listener(arm, None, None, queue=False, api_visibility="private")
    timer = gr.Timer(QUEUE_POLL_S, active=False)

    def arm_and_watch(request: gr.Request):
        session = session_id(request)
        cancels.arm(session)
        return queue_readout(cancels, manager, session), gr.Timer(active=True)

    def watch(shown: str | None, request: gr.Request):
        return queue_tick(cancels, manager, session_id(request), shown)

    timer.tick(watch, readout, [readout, timer], queue=False, api_visibility="private")
    return listener(arm_and_watch, None, [readout, timer], queue=False, api_visibility="private")


def queue_tick(cancels: CancelRegistry, manager: PipelineManager | None, session: str, shown: str | None) -> tuple:
    """One tick of the queue readout's timer: (the readout's update, the timer's). Off once the job started (its own
    readout takes over); otherwise only a change is sent: a tick's answer can reach the page after the run's own last
    readout (a run refused at once, on a loaded machine), and the same "starting…" again would then hide its message."""
    if cancels.queue_position(session) is None:
        return gr.update(), gr.Timer(active=False)
    text = queue_readout(cancels, manager, session)
    return (gr.update() if text == shown else text), gr.update()


def queue_readout(cancels: CancelRegistry, manager: PipelineManager | None, session: str):
    """The readout of a job still waiting: its place in the queue and what runs ahead of it (no update once it started)."""
    position = cancels.queue_position(session)
    if position is None:
        return gr.update()
    board = board_for(manager) if manager is not None else None
    holder = board.current() if board is not None else None
    running = [running_text(job, session) for job in jobs_of(manager) if job.state == "running"] if manager is not None else []
    return queue_markdown(position, holder.describe() if holder else None, board.progress() if holder else None, running)


def queue_markdown(position: int, holder: str | None, progress: dict | None, running: list[str] = ()) -> str:
    """`position` among the waiting browser jobs (1 = next); `holder` describes the job on the GPU, `progress` is its
    JobBoard figures; `running`: each running job and the worker running it (`workers_view.running_text`), when known."""
    if position == 1 and holder is None and not running:
        return "**starting…**"
    waiting = "yours is next" if position == 1 else f"{position - 1} job{'s' if position > 2 else ''} ahead of yours"
    lines = [f"**waiting in the queue** · {waiting}"]
    if holder is None and not running:
        lines.append("waiting for the job ahead to start")
    elif holder is not None:
        left = f", about {progress['eta_relative']:.0f} s left" if progress["eta_relative"] > 0 else ""
        lines.append(f"running now: {holder} · {progress['textinfo']}{left}")
    if running:
        lines.append("where: " + "; ".join(running))
    return "  \n".join(lines)


@dataclass
class StreamUpdate:
    readout: str
    preview: object = None  # the latest preview so far
    result: GenerationResult | None = None  # set on the last update of a finished run
    message: str | None = None  # set on the last update of a failed or stopped run
    preview_is_new: bool = False  # `preview` arrived since the previous update

    def preview_output(self):
        """For the preview image: the picture when it is new, else no update, so the last one stays on screen.

        Sending the same picture again is not harmless: Gradio rewrites its cached file in place (same content,
        same name), and a browser still reading that file gets a body shorter than the Content-Length it was
        promised (h11: "Too little data for declared Content-Length")."""
        return self.preview if self.preview_is_new else gr.update()


def cache_namespace(request) -> str:
    """A logged-in user's own approximate-cache namespace; "" (the single-user default) without a login."""
    return str(getattr(request, "username", None) or "")


def stream_generation(manager: PipelineManager, request: GenerationRequest, cancels: CancelRegistry, session: str, face=None,
                      namespace: str = ""):
    """Run one generation for a browser session and yield readout updates until it ends.

    If the consumer goes away (the browser closed, Gradio cancelled the event), the engine is told
    to stop at the next step, so the model lock is released. `namespace` is the user's cache namespace.
    """
    request = dataclasses.replace(request, cache_namespace=namespace)
    token = cancels.claim(session)
    if token.cancelled:  # Stop was pressed while this job waited in the queue
        cancels.forget(session, token)
        yield StreamUpdate("Stopped.", message=STOPPED_BEFORE_START)
        return
    readout = Readout()
    job = GenerationSession(manager, request, token, face, owner=session).start()
    preview = None
    try:
        for events in job.stream():
            for event in events:
                readout.apply(event)
            if has_workers(manager) and not readout.worker:
                readout.worker = worker_of_session(manager, session)
            fresh = latest_preview(events)
            preview = fresh or preview
            yield StreamUpdate(readout.markdown(), preview, preview_is_new=fresh is not None)
    finally:
        if job.result is None and job.error is None:
            token.cancel()
        cancels.forget(session, token)
    message = job.error_message()
    if message:
        yield StreamUpdate(readout.markdown(), preview, message=message)
        return
    readout.stage = "done"
    yield StreamUpdate(readout.markdown(), None, result=job.result)


def latest_preview(events: list[Event]):
    previews = [e for e in events if isinstance(e, PreviewReady)]
    return previews[-1].image if previews else None
