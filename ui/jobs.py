"""The one running generation, whoever started it: a browser tab (Generate, Face, Experiments) or the A1111 API.

A1111's `progress`, `interrupt` and `skip` act on "the" job, globally. Here every job that runs
through the API or the UI's `stream_generation` takes its *turn* on a `JobBoard` (one per manager)
before calling `manager.generate`, so the board always knows which job holds the GPU, its cancel
token and its size. The board subscribes once to `manager.bus`, where every generation's events
arrive, and keeps the running job's step and latest preview for `progress`.

    board = board_for(manager)
    job = Job.for_request("api", "scripts_txt2img", request, token)
    with board.turn(job, on_wait=lambda holder: ...):   # waits while another job runs
        manager.generate(request, cancel=token)
"""
from __future__ import annotations

import datetime as dt
import threading
import time
import weakref
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from pipelines.errors import GenerationCancelled
from pipelines.generate import CancelToken
from pipelines.telemetry import Event, PreviewReady, StageStarted, StepDone

WAIT_POLL_S = 0.1


@dataclass
class Job:
    source: str  # "api" | "browser"
    kind: str  # A1111's job name: "scripts_txt2img" for the API, "txt2img" for a browser tab
    token: CancelToken
    steps: int  # sampling steps per batch
    batch_count: int
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None  # wall clock, set when the job gets its turn
    ended_at: float | None = None
    timestamp: str = ""  # A1111's job_timestamp, %Y%m%d%H%M%S
    step: int = 0  # steps done over the whole run (all batches)
    stage: str = "waiting"
    preview: object = None  # the latest PIL preview
    skipped: bool = False

    @classmethod
    def for_request(cls, source: str, kind: str, request, token: CancelToken) -> "Job":
        steps = request.steps if isinstance(request.steps, int) and request.steps > 0 else 1
        count = request.batch_count if isinstance(request.batch_count, int) and request.batch_count > 0 else 1
        return cls(source, kind, token, steps, count)

    def describe(self) -> str:
        return f"an API {self.kind.removeprefix('scripts_')} job" if self.source == "api" else "a job from a browser tab"


class JobBoard:
    """Who holds the GPU now, and how far it is. One per manager (`board_for`).

    `slots`: jobs that may run at once: 1 in process; one per worker with `--workers ray`. A job's
    events are its own thread's (each job runs `manager.generate` in the thread that took its turn);
    A1111's one "current" job is the one that started first."""

    def __init__(self, bus, slots: int = 1) -> None:
        self._turn = threading.BoundedSemaphore(max(1, slots))
        self._lock = threading.Lock()
        self._running: dict[int, Job] = {}  # thread id -> the job that thread runs, in start order
        self.finished: deque[Job] = deque(maxlen=64)  # most recent last; the tests read the order
        self._unsubscribe = bus.subscribe(self._on_event)

    @contextmanager
    def turn(self, job: Job, on_wait: Callable[[str], None] | None = None) -> Iterator[Job]:
        """Hold the GPU for `job`. While another job holds it, call `on_wait` once with a description
        of that job, and wait; a Stop (the job's token) while waiting raises GenerationCancelled."""
        if not self._turn.acquire(blocking=False):
            if on_wait is not None:
                holder = self.current()
                on_wait(holder.describe() if holder else "another job")
            while not self._turn.acquire(timeout=WAIT_POLL_S):
                if job.token.cancelled:
                    raise GenerationCancelled("Stopped before it started: the job was still waiting for the GPU.")
        try:
            with self._lock:
                job.started_at = time.time()
                job.timestamp = dt.datetime.now().strftime("%Y%m%d%H%M%S")
                self._running[threading.get_ident()] = job
            yield job
        finally:
            with self._lock:
                job.ended_at = time.time()
                self._running.pop(threading.get_ident(), None)
                self.finished.append(job)
            self._turn.release()

    def current(self) -> Job | None:
        """The running job that started first (None when nothing runs)."""
        with self._lock:
            return self._first()

    def _first(self) -> Job | None:
        return next(iter(self._running.values()), None)

    def running(self) -> list[Job]:
        with self._lock:
            return list(self._running.values())

    def interrupt(self) -> bool:
        """Stop the running job (A1111: global). False when nothing runs."""
        job = self.current()
        if job is None:
            return False
        job.token.cancel()
        return True

    def skip(self) -> bool:
        """Skip the running job's current batch. False when nothing runs."""
        job = self.current()
        if job is None:
            return False
        job.skipped = True
        job.token.skip()
        return True

    def _on_event(self, event: Event) -> None:
        with self._lock:
            job = self._running.get(threading.get_ident()) or self._first()
            if job is None:
                return
            if isinstance(event, StepDone):
                job.step = event.index
                job.stage = "denoise"
            elif isinstance(event, PreviewReady):
                job.preview = event.image
            elif isinstance(event, StageStarted):
                job.stage = event.stage

    def progress(self) -> dict:
        """A1111's progress figures for the running job: progress 0-1, eta_relative, state, the preview."""
        with self._lock:
            job = self._first()
            if job is None:
                return {"progress": 0.0, "eta_relative": 0.0, "state": idle_state(), "preview": None, "textinfo": None}
            total = job.steps * job.batch_count
            done = min(job.step, total)
            batch = min((done - 1) // job.steps, job.batch_count - 1) if done else 0
            step_in_batch = done - batch * job.steps
            state = {
                "skipped": job.skipped,
                "interrupted": job.token.cancelled,
                "stopping_generation": False,
                "job": job.kind,
                "job_count": job.batch_count,
                "job_timestamp": job.timestamp,
                "job_no": batch,
                "sampling_step": step_in_batch,
                "sampling_steps": job.steps,
            }
            elapsed = time.time() - (job.started_at or time.time())
            progress = min(0.01 + done / total, 1.0)  # A1111 starts at 0.01, so a running job is never 0
            eta = elapsed / progress - elapsed
            text = f"{job.stage}: step {done}/{total}" if done else job.stage
            return {"progress": progress, "eta_relative": eta, "state": state, "preview": job.preview, "textinfo": text}


def idle_state() -> dict:
    return {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
            "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}


_boards: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_boards_lock = threading.Lock()


def parallel_jobs(manager) -> int:
    """Jobs that may run at once: one per Ray worker (`DispatchingManager`), else 1 (one device)."""
    return getattr(manager, "parallel_jobs", 1)


def board_for(manager) -> JobBoard:
    """The manager's board, made on first use (nothing starts at import)."""
    with _boards_lock:
        board = _boards.get(manager)
        if board is None:
            board = _boards[manager] = JobBoard(manager.bus, parallel_jobs(manager))
        return board
