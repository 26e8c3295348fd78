"""`DispatchingManager`: what the tabs, the A1111 API, the CLI and experiments hold when `--workers ray` is on.

It answers everything they call on a `PipelineManager`. Generation and what lives on the workers
(models in memory, the caches a job fills) go to the `WorkerPool`; the catalog, defaults, settings
and the event bus stay the UI process's own manager's (`__getattr__`), since every worker reads the
same models folder. The UI process never loads a model in this mode.

- `generate`: refused here for an unknown model (with the list), run on a worker otherwise; the
  job's events reach the listener and this process's bus, so the A1111 progress route and the
  job board see a worker's job as they see a local one.
- `parallel_jobs`: how many jobs may run at once (one per worker): the UI's GPU queue allows that many.
- `load` / `unload` / `workers`: the Models tab and status bar, per worker.
- `jobs`: the queue as the readouts show it: each running job with its worker and device, each
  waiting one with its place in line (`WorkerPool.jobs`).
- `caches`: each cache's figures added up over the workers (the approximate cache: per worker, or
  the one shared Milvus server, whose entries this process counts and maintains).
- `redecode`: not available: a job's latents stay on the worker that made them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from pipelines.caches.memo import CacheStats
from pipelines.errors import InvalidRequest
from pipelines.distributed.pool import WorkerPool, shares_approx_cache

CACHE_FIGURES_TTL_S = 1.0  # one Caches table asks every cache in turn: one round of worker calls serves them all

REDECODE_UNAVAILABLE = ("Re-decode is not available for jobs run on Ray workers (--workers ray): the latents stay on "
                        "the worker that made them and are not kept. Generate again with the VAE dtype you want "
                        "(same seed, same image).")


@dataclass(frozen=True)
class WorkerLoad:
    """A Load on the Models tab, done on a worker (`describe()` as `LoadReport`'s)."""

    text: str

    def describe(self) -> str:
        return self.text


class DispatchingManager:
    def __init__(self, manager, pool: WorkerPool):
        self._manager, self.pool = manager, pool
        self._figures: tuple[float, list[list[dict]]] | None = None

    def __getattr__(self, name):
        return getattr(self._manager, name)

    @property
    def parallel_jobs(self) -> int:
        return max(1, len(self.pool.names))

    def generate(self, request, listener=None, cancel=None, telemetry=True, face=None, reuse_latents=True):
        self._manager.entry(request.model)  # an unknown name is refused here, with the list of models
        request = self._manager.styles.expand(request)  # this machine's styles.csv: workers get the finished prompt
        publish = self._manager.bus.publish

        def relay(event) -> None:
            if listener:
                listener(event)
            publish(event)

        return self.pool.generate(request, listener=relay if telemetry else listener, cancel=cancel, telemetry=telemetry,
                                  face=face, reuse_latents=reuse_latents)

    # -- the Models tab and the status bar ----------------------------------------------------------

    def refresh(self):
        """Rescan the models folder here and on every worker (each keeps its own catalog)."""
        self.pool.refresh()
        return self._manager.refresh()

    def merge(self, request, progress=None, cancel=None):
        """The Checkpoint Merger writes into the models folder here; every worker rescans it so the new model runs there too."""
        result = self._manager.merge(request, progress, cancel)
        self.pool.refresh()
        return result

    def workers(self) -> list[dict]:
        """Every worker: name, device, models in VRAM/RAM, busy or idle, jobs done (`WorkerPool.statuses`)."""
        return self.pool.statuses()

    def jobs(self) -> list:
        """Running jobs with their worker and device, then waiting ones in line (`pipelines.jobs.JobView`)."""
        return self.pool.jobs()

    def load(self, name: str) -> WorkerLoad:
        self._manager.entry(name)
        return WorkerLoad(self.pool.load(name))

    def unload(self, name: str) -> bool:
        return bool(self.pool.unload(name))

    def redecode(self, kept, vae_dtype: str):
        raise InvalidRequest(REDECODE_UNAVAILABLE)

    # -- the Caches tab -------------------------------------------------------------------------------

    def caches(self) -> list:
        shared = shares_approx_cache(self._manager.config.approx_cache_uri)
        views = []
        for index, local in enumerate(self._manager.caches()):
            is_approximate = local is self._manager.approximate_cache()
            views.append(WorkerCaches(self, index, local.name, local.policy, is_approximate,
                                      local if is_approximate and shared else None))
        return views

    def worker_cache_figures(self) -> list[list[dict]]:
        now = time.monotonic()
        if self._figures is None or now - self._figures[0] > CACHE_FIGURES_TTL_S:
            self._figures = (now, self.pool.cache_stats())
        return self._figures[1]

    def forget_cache_figures(self) -> None:
        self._figures = None


@dataclass
class WorkerCaches:
    """One cache as the Caches tab sees it with workers: its figures added up over the workers.

    `shared`: the UI process's own approximate cache when it is the shared Milvus server's; entries
    and bytes are then read (and evicted, expired) here once, not added up N times."""

    front: DispatchingManager
    index: int
    name: str
    policy: str
    approximate: bool
    shared: object = None
    is_open = True

    @property
    def unavailable(self) -> str | None:
        if self.shared is not None:
            return self.shared.unavailable
        reasons = {rows[self.index]["unavailable"] for rows in self.front.worker_cache_figures() if rows[self.index]["unavailable"]}
        return "; ".join(sorted(reasons)) or None

    def stats(self) -> CacheStats:
        figures = [rows[self.index]["stats"] for rows in self.front.worker_cache_figures() if rows[self.index]["stats"] is not None]
        workers = len(self.front.pool.names)
        scope = "shared by the workers" if self.shared is not None else f"per worker, {workers} added up"
        entries = sum(f.entries for f in figures)
        size = sum(f.bytes for f in figures)
        if self.shared is not None:
            own = self.shared.stats()
            entries, size = own.entries, own.bytes
        return CacheStats(f"{self.name} ({scope})", self.policy, entries, sum(f.max_entries for f in figures), size,
                          sum(f.hits for f in figures), sum(f.misses for f in figures), sum(f.seconds_saved for f in figures))

    def clear(self) -> None:
        self.front.pool.clear_caches(self.name)
        if self.shared is not None:
            self.shared.clear()
        self.front.forget_cache_figures()
