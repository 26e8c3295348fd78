"""`WorkerPool`: the one scheduler in the UI process, in front of generation workers on Ray.

Policy, in a dozen lines:
- One worker (a Ray actor owning one PipelineManager) per GPU, `num_gpus=1` each, or N CPU workers
  sharing the CPU cores (`--worker-count N`); local Ray on loopback, or an existing cluster by address.
- A job goes to an idle worker that already holds its model (the status each worker sent back with
  its last job), else to the idle worker with the fewest jobs done. While no worker is idle it waits
  here, in line: first come, first served, except that an experiment's cells (`JobTag.yields`) let
  every other waiting job go first. So an experiment takes one turn in the user-facing queue while its
  cells fan out to every worker, and another user's job waits for one running cell, not for the grid.
- `jobs()`: every job running (with its worker and device) and waiting (with its place in line),
  as `pipelines.jobs.JobView`s: what the queue readouts show.
- `generate` has `PipelineManager.generate`'s signature and returns a `GenerationResult`, so the tabs,
  the CLI and the APIs can call either. Events are relayed to the listener in order; Stop/Skip on the
  caller's CancelToken are forwarded to the worker's token for the job.
- Images come back as PNG bytes through Ray's object store and are saved once, here, with a
  `Worker` key (worker name and device) in the infotext. Workers never write to the outputs folder.
- A worker that dies mid-job is restarted; the job is retried once on another worker (the restarted
  one if there is no other) and the listener gets a Notice saying so. A second death is an error.
- Ray is imported by `start()`, never at import time of anything the default install runs.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipelines import errors
from pipelines.errors import GenerationCancelled, LikenessError, OutputError
from pipelines.generate import CancelToken
from pipelines.jobs import JobTag, JobView, current_tag
from pipelines.infotext import quote
from pipelines.outputs import save_image
from pipelines.request import GenerationRequest, GenerationResult
from pipelines.telemetry import Event, Notice
from pipelines.distributed.wire import WireResult, WorkerFailure, unpack_images, unpack_result

log = logging.getLogger("likeness")

REPO_ROOT = Path(__file__).resolve().parents[2]
POLL_SECONDS = 0.02  # how often a running job's events are drained and Stop/Skip checked
LINE_POLL_SECONDS = 0.1  # how often a job waiting for a worker checks its Stop (a freed worker wakes it at once)
ACTOR_CONCURRENCY = 4  # generate + cancel/skip + drain + status at once (the manager still runs one job at a time)


class WorkerStartError(LikenessError):
    """Ray is missing, the cluster cannot be reached, or the workers did not start."""


class WorkerDied(LikenessError):
    """A job's worker died twice in a row (the first death is retried)."""


@dataclass
class PoolConfig:
    count: int | None = None  # workers; None: one per GPU in the cluster, else 1 CPU worker
    address: str | None = None  # None: a local Ray on loopback; "host:6379" (or "auto"): an existing cluster
    device: str = "auto"  # auto: GPU workers when the cluster has GPUs | cpu | gpu
    threads: int | None = None  # CPU workers' torch threads; None: the cluster's cores shared equally
    start_timeout_s: float = 300.0  # workers build their manager (torch, diffusers imports) before answering
    env: dict = field(default_factory=dict)  # extra environment for the workers (LIKENESS_* are passed anyway)


@dataclass
class _Slot:
    name: str
    gpu: bool
    threads: int | None
    handle: object = None
    in_flight: int = 0
    status: dict = field(default_factory=dict)  # the worker's own status(), from its last job or ping
    restarts: int = 0

    def holds(self, model: str) -> bool:
        return any(record["name"] == model for record in self.status.get("loaded", ()))

    @property
    def device(self) -> str:
        return self.status.get("device") or ("cuda" if self.gpu else "cpu")


@dataclass
class _PoolJob:
    """One `generate` call, from joining the line to its end (a retry keeps the same job)."""

    id: str
    tag: JobTag
    model: str
    prompt: str
    arrival: int  # first come, first served among jobs of the same kind
    since: float = field(default_factory=time.time)
    slot: _Slot | None = None  # set while it runs
    avoid: set = field(default_factory=set)  # workers that died under it

    @property
    def line_key(self) -> tuple:
        return (self.tag.yields, self.arrival)

    def view(self, position: int | None = None) -> JobView:
        if self.slot is None:
            return JobView(self.id, "waiting", self.tag, self.model, self.prompt, position=position, since=self.since)
        return JobView(self.id, "running", self.tag, self.model, self.prompt, self.slot.name, self.slot.device, since=self.since)


class _Died(Exception):
    def __init__(self, slot: _Slot, reason: str):
        super().__init__(reason)
        self.slot, self.reason = slot, reason


class WorkerPool:
    def __init__(self, manager_config, config: PoolConfig | None = None):
        """`manager_config`: the UI process's ManagerConfig; each worker gets a copy with its own device."""
        self.manager_config = manager_config
        self.config = config or PoolConfig()
        self._slots: list[_Slot] = []
        self._running: dict[str, _PoolJob] = {}  # job id -> the job, running on its slot
        self._waiting: list[_PoolJob] = []  # jobs waiting for an idle worker, in arrival order
        self._arrivals = itertools.count()
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)  # a worker became idle (or the line changed)
        self._ray = None
        self._started_ray = False

    # -- start and stop -----------------------------------------------------------------------------

    def start(self) -> "WorkerPool":
        ray = self._import_ray()
        env = {key: value for key, value in os.environ.items() if key.startswith("LIKENESS_")} | self.config.env
        # Workers import `pipelines` from this checkout: every node needs Likeness at the same path.
        runtime_env = {"env_vars": {"PYTHONPATH": str(REPO_ROOT)}}
        if not ray.is_initialized():
            if self.config.address:
                check_reachable(self.config.address)
                try:
                    ray.init(address=self.config.address, runtime_env=runtime_env, logging_level="WARNING")
                except (ConnectionError, RuntimeError, ValueError) as error:
                    raise WorkerStartError(f"Could not join the Ray cluster at {self.config.address}: {error}. "
                                           "Start it with `ray start --head` on that machine, check the address "
                                           "(host:port of the head, default port 6379) and that this machine can reach it.") from None
            else:
                count = self.config.count or 1
                ray.init(address="local", num_cpus=max(count, os.cpu_count() or 1), include_dashboard=False,
                         _node_ip_address="127.0.0.1", runtime_env=runtime_env, logging_level="WARNING")
            self._started_ray = True
        gpus = int(ray.cluster_resources().get("GPU", 0))
        use_gpus = self.config.device == "gpu" or (self.config.device == "auto" and gpus > 0 and self.manager_config.device != "cpu")
        if use_gpus and gpus == 0:
            raise WorkerStartError("GPU workers were asked for, but the Ray cluster has no GPU.")
        count = self.config.count or (gpus if use_gpus else 1)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        threads = None if use_gpus else (self.config.threads or max(1, cpus // count))
        self._env = env
        self._slots = [_Slot(f"worker-{i + 1}", use_gpus, threads) for i in range(count)]
        for slot in self._slots:
            self._spawn(slot)
        self._wait_ready(self._slots)
        log.info("Ray workers: %s", ", ".join(f"{slot.name} on {slot.status.get('device_label', slot.device)}" for slot in self._slots))
        log.info("approximate cache with workers: %s", approx_cache_scope(self.manager_config.approx_cache_uri))
        return self

    def _import_ray(self):
        try:
            import ray
        except ImportError:
            raise WorkerStartError("--workers ray needs Ray: .venv/bin/python -m pip install -r requirements-scale.txt") from None
        self._ray = ray
        return ray

    def _spawn(self, slot: _Slot) -> None:
        from pipelines.distributed.worker import GenerationWorker

        ray = self._ray
        config = worker_manager_config(self.manager_config, slot.name, slot.gpu)
        options = {"max_concurrency": ACTOR_CONCURRENCY, "num_cpus": slot.threads or 1, "num_gpus": 1 if slot.gpu else 0}
        slot.handle = ray.remote(GenerationWorker).options(**options).remote(slot.name, config, self._env, slot.threads)
        slot.status = {}

    def _wait_ready(self, slots: list[_Slot]) -> None:
        ray = self._ray
        refs = {slot.name: slot.handle.status.remote() for slot in slots}
        try:
            statuses = ray.get(list(refs.values()), timeout=self.config.start_timeout_s)
        except Exception as error:  # GetTimeoutError, RayActorError (a worker that failed to build its manager)
            raise WorkerStartError(f"The Ray workers did not start: {first_line(error)}") from None
        for slot, status in zip(slots, statuses):
            slot.status = status

    def shutdown(self) -> None:
        """Stop the workers (and the local Ray this pool started)."""
        ray = self._ray
        if ray is None:
            return
        for slot in self._slots:
            try:
                ray.kill(slot.handle, no_restart=True)
            except Exception:  # already gone
                pass
        self._slots = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    # -- jobs ----------------------------------------------------------------------------------------

    def generate(
        self,
        request: GenerationRequest,
        listener: Callable[[Event], None] | None = None,
        cancel: CancelToken | None = None,
        telemetry: bool = True,
        face=None,
        reuse_latents: bool = True,
    ) -> GenerationResult:
        """Run the job on a worker; the same contract as PipelineManager.generate (LikenessError subclasses
        with user-facing sentences; GenerationCancelled keeps the images finished before a Stop)."""
        cancel = cancel or CancelToken()
        job = _PoolJob(uuid.uuid4().hex[:12], current_tag(), request.model, request.prompt, next(self._arrivals))
        remote_request = dataclasses.replace(request, save=False)  # saved here, once
        for attempt in (1, 2):
            slot = self._take_worker(job, cancel)
            try:
                wire = self._run_on(slot, job, remote_request, face, listener, cancel)
                break
            except _Died as died:
                job.avoid.add(slot.name)
                if attempt == 2:
                    raise WorkerDied(f"{slot.name} ({slot.device}) stopped during the job too ({died.reason}), after a first "
                                     "worker had. It is being restarted; the job was not run. Try again, and check the "
                                     "workers' logs (Ray's session folder) if it happens again.") from None
                text = (f"{slot.name} ({slot.device}) stopped during the job ({died.reason}); it is being restarted "
                        "and the job is retried once on another worker.")
                log.warning(text)
                if listener:
                    listener(Notice(text, "warning"))
        if isinstance(wire, WorkerFailure):
            if wire.error_class in ("ModelNotFound", "ModelLoadError"):  # a worker whose folder differs: say which
                wire = dataclasses.replace(wire, message=f"On {slot.name} ({slot.device}, {slot.status.get('host', '?')}): {wire.message}")
            raise rebuild_error(wire)
        return self._finish(wire, request)

    def _take_worker(self, job: _PoolJob, cancel: CancelToken) -> _Slot:
        """Wait in line for a worker (see the module's policy); a Stop while waiting ends the job unrun."""
        with self._freed:
            if not self._slots:
                raise WorkerStartError("The worker pool is not started (or was shut down).")
            job.since, job.slot = time.time(), None
            self._waiting.append(job)
            self._hand_out_idle_workers()
            while job.slot is None and not cancel.cancelled:
                self._freed.wait(LINE_POLL_SECONDS)
            if job.slot is None:
                self._waiting.remove(job)
            else:
                if not cancel.cancelled:
                    return job.slot
                self._release(job)  # handed a worker in the instant of its Stop: not sent, the worker goes on
            raise GenerationCancelled("Stopped before it started: the job was still waiting for a worker.")

    def _hand_out_idle_workers(self) -> None:
        """Give each idle worker to the first job in line it suits (lock held). The worker is the job's from
        this moment, before its thread wakes: a yielding job (an experiment's cell) whose thread happens to
        wake first cannot take a worker freed for a job ahead of it in line."""
        handed = False
        for waiting in self._line():
            slot = self._idle_worker_for(waiting)
            if slot is None:
                continue
            self._waiting.remove(waiting)
            slot.in_flight += 1  # counted before the job is sent, so the next job in line sees this worker busy
            waiting.slot, waiting.since = slot, time.time()
            self._running[waiting.id] = waiting
            handed = True
        if handed:
            self._freed.notify_all()

    def _release(self, job: _PoolJob) -> None:
        """The job's worker is free again: the next in line gets it at once. (Lock held.)"""
        job.slot.in_flight -= 1
        self._running.pop(job.id, None)
        job.slot = None
        self._hand_out_idle_workers()  # wakes the threads of the jobs it hands a worker to

    def _line(self) -> list[_PoolJob]:
        return sorted(self._waiting, key=lambda job: job.line_key)

    def _idle_worker_for(self, job: _PoolJob) -> _Slot | None:
        """An idle worker holding the job's model, else the idle one with the fewest jobs done; a worker that
        died under this job only when there is no other."""
        eligible = [slot for slot in self._slots if slot.name not in job.avoid] or list(self._slots)
        idle = [slot for slot in eligible if slot.in_flight == 0]
        if not idle:
            return None
        holding = [slot for slot in idle if slot.holds(job.model)]
        return holding[0] if holding else min(idle, key=lambda s: s.status.get("jobs_done", 0))

    def _run_on(self, slot: _Slot, job: _PoolJob, request, face, listener, cancel: CancelToken):
        from ray.exceptions import RayActorError, RayTaskError

        ray = self._ray
        handle = slot.handle
        job_id = job.id
        try:
            ref = handle.generate.remote(job_id, request, face)
            stop_sent = False
            while True:
                ready, _ = ray.wait([ref], timeout=POLL_SECONDS)
                if cancel.cancelled and not stop_sent:
                    handle.cancel.remote(job_id)
                    stop_sent = True
                elif cancel.take_skip():
                    handle.skip.remote(job_id)
                if ready:
                    break
                if listener:
                    self._relay(handle, job_id, listener, final=False)
            try:
                wire = ray.get(ref)
            except RayActorError as error:
                self._restart(slot)  # before the worker is freed: the next job in line gets the new one
                raise _Died(slot, first_line(error)) from None
            except RayTaskError as error:  # a bug in the worker, not a user error: show its cause
                cause = getattr(error, "cause", None)
                raise (cause if isinstance(cause, Exception) else error) from None
            self._relay(handle, job_id, listener, final=True)
            if isinstance(wire, WireResult) and wire.status:
                slot.status = wire.status
            return wire
        finally:
            with self._freed:
                self._release(job)

    def _relay(self, handle, job_id: str, listener, final: bool) -> None:
        from ray.exceptions import RayActorError

        try:
            events = self._ray.get(handle.drain.remote(job_id, final))
        except RayActorError:  # the worker died between two drains: the job's own get reports it
            return
        if listener:
            for event in events:
                listener(event)

    def _restart(self, slot: _Slot) -> None:
        with self._lock:
            try:
                self._ray.kill(slot.handle, no_restart=True)
            except Exception:  # already dead
                pass
            slot.restarts += 1
            self._spawn(slot)  # not waited for: a job sent to it queues until its manager is built
        log.warning("%s restarted (restart %d).", slot.name, slot.restarts)

    def _finish(self, wire: WireResult, request: GenerationRequest) -> GenerationResult:
        """The result as the manager would return it, with the Worker key, saved here if asked."""
        result = unpack_result(wire)
        worker = f"{wire.worker} ({wire.device})"
        for item in result.images:
            item.infotext = f"{item.infotext}, Worker: {quote(worker)}"
        result.request = dataclasses.replace(result.request, save=request.save)
        if request.save:
            start = time.perf_counter()
            for item in result.images:
                try:
                    item.path = str(save_image(item.image, item.infotext, self.manager_config.outputs_dir, item.seed))
                except OutputError as error:
                    result.warnings.append(str(error))
            result.stage_seconds["save"] = time.perf_counter() - start
        return result

    # -- models and caches on the workers -----------------------------------------------------------

    def load(self, name: str) -> str:
        """Load a model on one worker ahead of jobs: an idle one that does not hold it yet (the least busy)."""
        slot = self._choose_for_load(name)
        try:
            return f"{slot.name}: {self._ray.get(slot.handle.load.remote(name))}"
        except Exception as error:  # RayTaskError around the worker's LikenessError: its sentence, with the worker
            cause = getattr(error, "cause", None)
            if isinstance(cause, LikenessError):
                raise type(cause)(f"On {slot.name} ({slot.device}): {cause}") from None
            raise LikenessError(f"{slot.name} could not load {name}: {first_line(error)}") from None
        finally:
            with self._freed:
                slot.in_flight -= 1
                self._hand_out_idle_workers()

    def _choose_for_load(self, name: str) -> _Slot:
        with self._lock:
            if not self._slots:
                raise WorkerStartError("The worker pool is not started (or was shut down).")
            slot = min(self._slots, key=lambda s: (s.holds(name), s.in_flight, len(s.status.get("loaded", ()))))
            slot.in_flight += 1
            return slot

    def unload(self, name: str) -> list[str]:
        """Drop a model from every worker holding it; the names of those workers. RuntimeError while a job uses it."""
        dropped = []
        for slot in list(self._slots):
            try:
                if self._ray.get(slot.handle.unload.remote(name)):
                    dropped.append(slot.name)
            except Exception as error:
                cause = getattr(error, "cause", None)
                raise RuntimeError(f"{slot.name}: {cause or first_line(error)}") from None
        self.statuses()  # routing must not send the model's next job to a worker for a model it dropped
        return dropped

    def cache_stats(self, timeout_s: float = 2.0) -> list[list[dict]]:
        """Per worker that answers, its caches' figures (`GenerationWorker.cache_stats`), in the manager's cache order."""
        refs = [slot.handle.cache_stats.remote() for slot in self._slots]
        rows = []
        for ref in refs:
            try:
                rows.append(self._ray.get(ref, timeout=timeout_s))
            except Exception:  # a worker starting or restarting: left out of the sums for now
                continue
        return rows

    def refresh(self) -> None:
        """Every worker rescans the models folder (a file added or replaced since they started)."""
        self._ray.get([slot.handle.refresh.remote() for slot in self._slots])

    def clear_caches(self, name: str | None = None) -> None:
        self._ray.get([slot.handle.clear_caches.remote(name) for slot in self._slots])

    # -- status -------------------------------------------------------------------------------------

    def statuses(self, timeout_s: float = 2.0) -> list[dict]:
        """Every worker: device, models in VRAM/RAM, busy or idle, jobs done, restarts (Models tab, status bar)."""
        ray = self._ray
        refs = [(slot, slot.handle.status.remote()) for slot in self._slots]
        rows = []
        for slot, ref in refs:
            try:
                status = ray.get(ref, timeout=timeout_s)
                slot.status = status
                state = "busy" if status["busy"] or slot.in_flight else "idle"
            except Exception as error:  # starting (building its manager) or gone
                status, state = {"name": slot.name, "device": slot.device}, f"not answering ({first_line(error)})"
            rows.append(status | {"state": state, "in_flight": slot.in_flight, "restarts": slot.restarts})
        return rows

    def running(self) -> dict[str, str]:
        """job id -> the name of the worker running it."""
        with self._lock:
            return {job_id: job.slot.name for job_id, job in self._running.items() if job.slot is not None}

    def jobs(self) -> list[JobView]:
        """Running jobs (worker, device) in start order, then waiting ones in the order they will get a worker."""
        with self._lock:
            running = [job.view() for job in sorted(self._running.values(), key=lambda job: job.since) if job.slot is not None]
            waiting = [job.view(place) for place, job in enumerate(self._line(), 1)]
        return running + waiting

    def handle(self, name: str):
        """The Ray actor handle of a worker (tests and tools: kill it, call it directly)."""
        return next(slot.handle for slot in self._slots if slot.name == name)

    @property
    def names(self) -> list[str]:
        return [slot.name for slot in self._slots]


def shares_approx_cache(uri: str) -> bool:
    """A Milvus server (http, https, tcp): one store every worker reads and writes. Milvus Lite (a .db
    folder) and the embedded faiss index open in one process only."""
    return (uri or "").strip().startswith(("http://", "https://", "tcp://"))


def approx_cache_scope(uri: str) -> str:
    if shares_approx_cache(uri):
        return f"shared by every worker ({uri.strip()}); eviction and expiry run in this process"
    return ("one per worker, not shared (the embedded store opens in one process only): a prompt cached on one worker "
            "is not a hit on another. For one shared cache run a Milvus server and pass --approx-cache-uri http://HOST:19530")


def worker_manager_config(config, worker: str, gpu: bool):
    """The UI process's ManagerConfig as one worker runs it: its device (Ray shows each actor its one GPU)
    and its approximate cache, which is either the shared Milvus server, maintained by the UI process
    only, or the worker's own embedded store (its own folder, its own Milvus Lite file)."""
    changes = {"device": "cuda" if gpu else "cpu"}
    uri = (config.approx_cache_uri or "").strip()
    if shares_approx_cache(uri):
        changes["approx_cache_maintains"] = False
    else:
        changes["approx_cache_folder"] = Path(config.cache_dir) / "approximate-workers" / worker
        if uri:  # Milvus Lite: a .db folder per worker, next to the one named
            lite = Path(uri)
            changes["approx_cache_uri"] = str(lite.with_name(f"{lite.stem}-{worker}{lite.suffix}"))
    return dataclasses.replace(config, **changes)


def rebuild_error(failure: WorkerFailure) -> LikenessError:
    """The worker's LikenessError, same class and sentence (a Stop keeps its finished images)."""
    cls = getattr(errors, failure.error_class, None)
    if not (isinstance(cls, type) and issubclass(cls, LikenessError)):
        cls = LikenessError
    if cls is errors.GenerationCancelled:
        return errors.GenerationCancelled(failure.message, partial=unpack_images(failure.partial))
    return cls(failure.message)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A quick TCP check of host:port before Ray's own (which retries for a minute): a clear message now."""
    if address == "auto":  # Ray finds the cluster itself (RAY_ADDRESS, or a `ray start` on this machine)
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise WorkerStartError(f"--ray-address {address!r} is not host:port (for example 192.168.1.10:6379).")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        raise WorkerStartError(f"Cannot reach the Ray cluster at {address}: {error.strerror or error}. Start the head with "
                               "`ray start --head --port 6379` on that machine, or check the address and the firewall.") from None


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
