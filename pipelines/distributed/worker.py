"""`GenerationWorker`: one `PipelineManager` on one device, run as a Ray actor.

The pool turns this plain class into an actor (`ray.remote(GenerationWorker).options(...)`), so this
module never imports Ray and the class can be tested in-process. The actor is threaded
(`max_concurrency` >= 2): `cancel`, `skip`, `drain` and `status` run while `generate` runs, which is
how Stop/Skip reach the job's CancelToken and how the job's events reach the caller.

Events: the job's listener appends each event to the job's list; the pool drains it every few tens
of milliseconds and replays the events to its own listener, in order. (Polling the worker costs one
small call per interval and needs no extra actor; a queue actor per job would cost more to create
than most jobs on a GPU take to run.)
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

from pipelines.errors import LikenessError
from pipelines.generate import CancelToken
from pipelines.distributed.wire import WorkerFailure, pack_images, pack_result

log = logging.getLogger("likeness")


@dataclasses.dataclass
class _Job:
    cancel: CancelToken
    events: list
    prompt: str
    model: str
    done: bool = False


class GenerationWorker:
    def __init__(self, name: str, config, env: dict | None = None, threads: int | None = None):
        """`config`: the UI process's ManagerConfig with this worker's device; `env`: the LIKENESS_*
        variables to honour here (the demo folder, the approximate cache URI), set before the manager;
        `threads`: torch's CPU threads (the CPU share this worker was given)."""
        os.environ.update(env or {})
        if threads:
            import torch

            torch.set_num_threads(threads)
        from pipelines.manager import PipelineManager
        from pipelines.quiet import quiet_libraries

        quiet_libraries()
        self.name = name
        self.manager = PipelineManager(config)
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._jobs_done = 0
        self._started = time.time()

    def generate(self, job_id: str, request, face=None):
        """Run one job; a WireResult, or a WorkerFailure for an error the user can act on.

        The request arrives with `save=False`: the pool saves, once, in the UI process."""
        job = _Job(CancelToken(), [], request.prompt, request.model)
        with self._lock:
            self._jobs[job_id] = job
        try:
            result = self.manager.generate(request, listener=job.events.append, cancel=job.cancel, face=face)
        except LikenessError as error:
            partial = getattr(error, "partial", None) or ()
            return WorkerFailure(type(error).__name__, str(error), pack_images(partial))
        finally:
            with self._lock:
                self._jobs_done += 1
                job.done = True  # its events stay until the pool's last drain (`final=True` forgets the job)
        return pack_result(result, self.name, self.status())

    def drain(self, job_id: str, final: bool = False) -> list:
        """The job's events since the last drain (in order); `final` forgets the job."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return []
            events, job.events[:] = list(job.events), []
            if final:
                del self._jobs[job_id]
        return events

    def cancel(self, job_id: str) -> bool:
        """Stop: the job ends at its next step. False when the job is not (or no longer) here."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return False
        job.cancel.cancel()
        return True

    def skip(self, job_id: str) -> bool:
        """Skip: the job drops its current batch and goes on with the next."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return False
        job.cancel.skip()
        return True

    def status(self) -> dict:
        """Device, models in VRAM/RAM, busy or idle, jobs done: what the pool routes by and the UI shows."""
        manager_status = self.manager.status()
        with self._lock:
            running = [{"job": job_id, "model": job.model, "prompt": job.prompt}
                       for job_id, job in self._jobs.items() if not job.done]
            done = self._jobs_done
        loaded = [{"name": record["name"], "level": record["level"], "size_bytes": record["size_bytes"]}
                  for record in manager_status["loaded"]]
        return {
            "name": self.name,
            "device": str(self.manager.device),
            "device_label": manager_status["device"],
            "loaded": loaded,
            "memory": manager_status["memory"],
            "busy": bool(running),
            "jobs_done": done,
            "pid": os.getpid(),
            "host": os.uname().nodename,
            "uptime_s": round(time.time() - self._started, 1),
            "running": running,
        }

    def load(self, name: str) -> str:
        """Load a model ahead of jobs (the Models tab's Load on this worker)."""
        return self.manager.load(name).describe()

    def unload(self, name: str) -> bool:
        """Drop a model from this worker's RAM and VRAM (the Models tab's Unload). RuntimeError while a job uses it."""
        return self.manager.unload(name)

    def cache_stats(self) -> list[dict]:
        """Every cache's figures on this worker (the Caches tab adds them up over the workers)."""
        rows = []
        for cache in self.manager.caches():
            opened = getattr(cache, "is_open", True)  # the approximate cache is read on first use only
            rows.append({"stats": cache.stats() if opened else None, "unavailable": getattr(cache, "unavailable", None)})
        return rows

    def refresh(self) -> int:
        """Rescan the models folder (the UI's Refresh); how many models this worker now sees."""
        return len(self.manager.refresh())

    def clear_caches(self, name: str | None = None) -> None:
        """Clear one cache by name (None: every cache) on this worker."""
        for cache in self.manager.caches():
            if name is None or cache.name == name:
                cache.clear()

    def ping(self) -> str:
        return self.name
