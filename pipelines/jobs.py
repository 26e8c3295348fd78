"""Who a generation is for and where it runs: the data every queue readout shows.

A caller tags the jobs it starts (`tagged(owner=..., source=..., kind=...)`): a browser session,
the A1111 API, an experiment's cells. The tag travels in a context variable, so `generate` keeps
one signature for the tabs, the CLI and the APIs, and the engine needs no idea of a session.

Both managers answer `jobs()` with `JobView`s, running jobs first, then the waiting ones in the
order they will start: the in-process manager names "this process" and its device; the Ray
dispatcher (`pipelines.distributed`) names the worker and its device.

`yields`: an experiment cell. The experiment holds one turn in the user-facing queue while its
cells fan out to every worker; a cell waiting for a worker lets every other waiting job go first,
so another user's job waits at most for one running cell to end, never behind the whole grid.
"""
from __future__ import annotations

import contextvars
import itertools
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator

IN_PROCESS = "this process"


@dataclass(frozen=True)
class JobTag:
    owner: str = ""  # a browser session or a user name; "" when the caller did not say
    source: str = "local"  # "browser" | "api" | "local" (the CLI, a script, a test)
    kind: str = "generate"  # "txt2img", "img2img", "experiment cell", ...
    yields: bool = False  # waits behind every other waiting job (an experiment's cells)


@dataclass(frozen=True)
class JobView:
    id: str
    state: str  # "running" | "waiting"
    tag: JobTag
    model: str
    prompt: str
    worker: str = ""  # running: the worker's name (IN_PROCESS without workers)
    device: str = ""  # running: that worker's device ("cpu", "cuda")
    position: int | None = None  # waiting: 1 = the next to start
    since: float = 0.0  # wall clock: when it started (running) or joined the line (waiting)

    def where(self) -> str:
        """"worker-1 (cpu)" for a running job; "waiting, 2nd in line" for a waiting one."""
        if self.state == "running":
            return f"{self.worker} ({self.device})"
        return f"waiting, {ordinal(self.position or 0)} in line"


_tag: contextvars.ContextVar[JobTag] = contextvars.ContextVar("likeness_job_tag", default=JobTag())


def current_tag() -> JobTag:
    return _tag.get()


@contextmanager
def tagged(**fields) -> Iterator[JobTag]:
    """Tag the jobs this thread starts inside the block; fields not given keep the enclosing tag's."""
    tag = replace(_tag.get(), **fields)
    reset = _tag.set(tag)
    try:
        yield tag
    finally:
        _tag.reset(reset)


def carrying_tag(target: Callable) -> Callable:
    """`target` to run in a new thread with the starting thread's tag (a Thread starts with an empty context)."""
    context = contextvars.copy_context()
    return lambda *args, **kwargs: context.run(target, *args, **kwargs)


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class LocalJobs:
    """The in-process manager's jobs: the one holding the generation lock runs, the others wait for it.

    Python's lock is not first-come-first-served, so a waiting job's place is its arrival order, which
    is the order it most likely starts in (the UI's own queue lets one job at a time reach here anyway)."""

    def __init__(self, device: Callable[[], str]):
        self._device = device
        self._jobs: dict[str, tuple[JobView, bool]] = {}  # id -> (view, running), in arrival order
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    @contextmanager
    def track(self, request) -> Iterator[Callable[[], None]]:
        """Around one `generate`: the job waits until the block calls the yielded `started()`."""
        job_id = f"local-{next(self._ids)}"
        view = JobView(job_id, "waiting", current_tag(), request.model, request.prompt, since=time.time())
        with self._lock:
            self._jobs[job_id] = (view, False)

        def started() -> None:
            with self._lock:
                self._jobs[job_id] = (replace(view, state="running", worker=IN_PROCESS, device=self._device(), since=time.time()), True)

        try:
            yield started
        finally:
            with self._lock:
                self._jobs.pop(job_id, None)

    def snapshot(self) -> list[JobView]:
        with self._lock:
            entries = list(self._jobs.values())
        running = [view for view, is_running in entries if is_running]
        waiting = [replace(view, position=place) for place, view in enumerate((v for v, r in entries if not r), 1)]
        return running + waiting
