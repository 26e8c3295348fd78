"""Telemetry as events.

The engine publishes frozen event dataclasses; the UI, the CLI and the benchmarks subscribe to the
same stream. Stage timers synchronize the device before reading the clock, so a stage is never
billed for work another stage queued on the GPU.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Union

import torch

from pipelines import devices


STAGES = ("model load", "text encode", "face embed", "denoise", "VAE decode", "face detail", "save")


@dataclass(frozen=True)
class StageStarted:
    stage: str
    at: float


@dataclass(frozen=True)
class StageEnded:
    stage: str
    at: float
    seconds: float
    detail: str = ""


@dataclass(frozen=True)
class StepDone:
    index: int  # 1-based: "step 3/20" has index 3
    total: int
    step_seconds: float
    elapsed_seconds: float  # since the denoise stage started

    @property
    def iterations_per_second(self) -> float:
        return 1.0 / self.step_seconds if self.step_seconds > 0 else float("inf")

    @property
    def eta_seconds(self) -> float:
        # Average over the steps done so far: the first step often carries warm-up, but a
        # single-step estimate jumps around far more.
        return (self.total - self.index) * (self.elapsed_seconds / self.index)


@dataclass(frozen=True)
class MemorySampled:
    stage: str
    reading: devices.MemoryReading


@dataclass(frozen=True)
class Notice:
    """A line meant for the user: a warning, a fallback taken, a load report."""

    text: str
    level: str = "info"  # info | warning


@dataclass(frozen=True)
class PreviewReady:
    index: int
    image: object  # PIL.Image; kept untyped so this module does not import PIL


Event = Union[StageStarted, StageEnded, StepDone, MemorySampled, Notice, PreviewReady]
Subscriber = Callable[[Event], None]


class EventBus:
    """Delivers events to subscribers in order; `subscribe` returns the function that unsubscribes."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers)

    def publish(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber(event)


@dataclass
class StageClock:
    """Collects per-stage seconds for one generation while publishing the events."""

    bus: EventBus
    device: torch.device
    seconds: dict[str, float] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)  # each stage's latest note ("memoized", "prompt editing: ...")

    @contextmanager
    def stage(self, name: str) -> Iterator[dict]:
        """Time one stage. The yielded dict may receive a `detail` string for the end event."""
        info: dict = {}
        devices.synchronize(self.device)
        start = time.perf_counter()
        self.bus.publish(StageStarted(name, start))
        try:
            yield info
        finally:
            devices.synchronize(self.device)
            end = time.perf_counter()
            self.seconds[name] = self.seconds.get(name, 0.0) + (end - start)
            if info.get("detail"):
                self.details[name] = info["detail"]
            self.bus.publish(StageEnded(name, end, end - start, info.get("detail", "")))
            self.bus.publish(MemorySampled(name, devices.read_memory(self.device)))


class StepClock:
    """Turns the denoiser's per-step callback into StepDone events.

    With `synchronize=True` each step waits for its kernels so the step time is real; the
    benchmark measures what that costs (telemetry on vs off).

    `total` is what the plan counted ahead. A pass whose length is known only during the run (the
    face detailer: one pass per face it finds) is wrapped in `added_steps`, so "step i/N" stays true:
    N grows when the pass is known, and every later index moves up by its length.
    """

    def __init__(self, bus: EventBus, device: torch.device, total: int, synchronize: bool = True):
        self.bus = bus
        self.device = device
        self.total = total
        self.synchronize = synchronize
        self.step_seconds: list[float] = []
        self._start = time.perf_counter()
        self._last = self._start
        self._added = 0  # steps of finished added passes: later indices come after them

    @contextmanager
    def added_steps(self, count: int) -> Iterator[None]:
        """Steps the plan did not count. Inside, the pass reports indices as if it came right after the
        batch's planned steps; after it (finished, skipped or failed) later indices move up by `count`."""
        self.total += count
        try:
            yield
        finally:
            self._added += count

    def restart(self) -> None:
        """Start the clock now: the first step is timed from here, not from before the prompt was encoded."""
        self._start = self._last = time.perf_counter()

    def step_done(self, index: int) -> StepDone:
        if self.synchronize:
            devices.synchronize(self.device)
        now = time.perf_counter()
        index += self._added
        event = StepDone(index=index, total=self.total, step_seconds=now - self._last, elapsed_seconds=now - self._start)
        self._last = now
        self.step_seconds.append(event.step_seconds)
        self.bus.publish(event)
        return event


def format_step(event: StepDone) -> str:
    return (
        f"step {event.index}/{event.total} · {event.step_seconds:.2f} s/step · "
        f"{event.iterations_per_second:.2f} it/s · ETA {event.eta_seconds:.1f} s"
    )
