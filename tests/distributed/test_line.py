"""The pool's line of jobs waiting for an idle worker, without a cluster: who gets a freed worker first.

The slots stand in for started workers (no Ray calls are made: the tests take and free workers the
way `generate` does around a job), so the policy is checked exactly, in milliseconds."""
from __future__ import annotations

import threading
import time

import pytest

from pipelines.distributed.pool import WorkerPool, _PoolJob, _Slot
from pipelines.errors import GenerationCancelled
from pipelines.generate import CancelToken
from pipelines.jobs import JobTag


def started_pool(*names: str, holding: dict[str, str] | None = None) -> WorkerPool:
    pool = WorkerPool(manager_config=None)
    pool._slots = [_Slot(name, gpu=False, threads=1, status={"device": "cpu", "jobs_done": 0,
                                                              "loaded": [{"name": (holding or {}).get(name, ""), "level": "RAM"}]})
                   for name in names]
    return pool


def pool_job(pool: WorkerPool, name: str, yields: bool = False, model: str = "demo") -> _PoolJob:
    return _PoolJob(name, JobTag(owner=name, kind="experiment cell" if yields else "txt2img", yields=yields), model,
                    f"prompt of {name}", next(pool._arrivals))


def free(pool: WorkerPool, job: _PoolJob) -> None:
    """What `_run_on` does when a job ends."""
    with pool._freed:
        pool._release(job)


def wait_in_line(pool: WorkerPool, job: _PoolJob, started: list, cancel: CancelToken | None = None) -> threading.Thread:
    def run():
        try:
            pool._take_worker(job, cancel or CancelToken())
            started.append(job.id)
        except GenerationCancelled:
            started.append(f"{job.id} stopped")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def until(predicate, timeout=5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def waiting_ids(pool: WorkerPool) -> list[str]:
    return [job.id for job in pool.jobs() if job.state == "waiting"]


def test_a_job_waiting_for_a_worker_goes_before_an_experiment_cell_that_came_first():
    pool = started_pool("worker-1", "worker-2")
    cell_a, cell_b = pool_job(pool, "cell-a", yields=True), pool_job(pool, "cell-b", yields=True)
    pool._take_worker(cell_a, CancelToken())
    pool._take_worker(cell_b, CancelToken())  # the grid's two lanes hold both workers
    started: list[str] = []
    next_cell = pool_job(pool, "cell-c", yields=True)
    wait_in_line(pool, next_cell, started)  # the grid's next cell joins the line first...
    assert until(lambda: waiting_ids(pool) == ["cell-c"])
    user = pool_job(pool, "user", model="other")
    wait_in_line(pool, user, started)  # ...then another user's job
    assert until(lambda: waiting_ids(pool) == ["user", "cell-c"])
    views = {job.id: job for job in pool.jobs()}
    assert views["user"].position == 1 and views["cell-c"].position == 2
    assert views["cell-a"].where() == "worker-1 (cpu)" and views["cell-b"].where() == "worker-2 (cpu)"

    free(pool, cell_a)  # the first cell to end frees its worker: the user's job takes it
    assert until(lambda: started == ["user"])
    time.sleep(0.2)
    assert started == ["user"], "the cell took a worker while none was idle"
    assert {job.id: job.where() for job in pool.jobs()}["user"] == "worker-1 (cpu)"
    free(pool, cell_b)
    assert until(lambda: started == ["user", "cell-c"])


def test_a_freed_worker_is_the_waiting_jobs_before_its_thread_wakes_so_a_cell_cannot_start_ahead_of_it():
    """CI saw a cell start between a user's job joining the line and the job starting: both workers came
    free before the user's thread woke, and the cell's thread, awake first, took one. The job now owns
    the worker it is handed from the moment it is freed, so it always starts before any cell after it."""
    pool = started_pool("worker-1", "worker-2")
    cell_a, cell_b = pool_job(pool, "cell-a", yields=True), pool_job(pool, "cell-b", yields=True)
    pool._take_worker(cell_a, CancelToken())
    pool._take_worker(cell_b, CancelToken())
    started: list[str] = []
    next_cell, user = pool_job(pool, "cell-c", yields=True), pool_job(pool, "user", model="other")
    wait_in_line(pool, next_cell, started)
    wait_in_line(pool, user, started)
    assert until(lambda: waiting_ids(pool) == ["user", "cell-c"])
    with pool._freed:  # no waiting thread can run while this is held
        pool._release(cell_a)
        assert user.slot is not None and user.slot.name == "worker-1" and next_cell.slot is None
        pool._release(cell_b)
        assert next_cell.slot is not None and next_cell.slot.name == "worker-2"
        assert user.since <= next_cell.since
    assert until(lambda: sorted(started) == ["cell-c", "user"])
    assert {job.id: job.where() for job in pool.jobs()} == {"user": "worker-1 (cpu)", "cell-c": "worker-2 (cpu)"}


def test_a_job_handed_a_worker_in_the_instant_of_its_stop_gives_it_back_unrun():
    pool = started_pool("worker-1")
    first, second = pool_job(pool, "first"), pool_job(pool, "second")
    pool._take_worker(first, CancelToken())
    started: list[str] = []
    cancel = CancelToken()
    wait_in_line(pool, second, started, cancel)
    assert until(lambda: waiting_ids(pool) == ["second"])
    with pool._freed:
        pool._release(first)  # handed to the waiting job...
        cancel.cancel()  # ...which is stopped before its thread wakes
    assert until(lambda: started == ["second stopped"])
    assert pool.jobs() == [] and pool._slots[0].in_flight == 0


def test_jobs_of_the_same_kind_are_first_come_first_served_and_a_freed_worker_is_taken_once():
    pool = started_pool("worker-1")
    first = pool_job(pool, "first")
    pool._take_worker(first, CancelToken())
    started: list[str] = []
    for name in ("second", "third"):
        wait_in_line(pool, pool_job(pool, name), started)
        assert until(lambda name=name: waiting_ids(pool)[-1:] == [name])
    assert [job.position for job in pool.jobs() if job.state == "waiting"] == [1, 2]
    free(pool, first)
    assert until(lambda: started == ["second"])
    time.sleep(0.2)
    assert started == ["second"] and waiting_ids(pool) == ["third"]


def test_an_idle_worker_holding_the_model_is_preferred():
    pool = started_pool("worker-1", "worker-2", holding={"worker-2": "tiny-sd15"})
    assert pool._take_worker(pool_job(pool, "job", model="tiny-sd15"), CancelToken()).name == "worker-2"


def test_stop_while_waiting_for_a_worker_leaves_the_line():
    pool = started_pool("worker-1")
    pool._take_worker(pool_job(pool, "running"), CancelToken())
    started: list[str] = []
    cancel = CancelToken()
    thread = wait_in_line(pool, pool_job(pool, "waiting"), started, cancel)
    assert until(lambda: waiting_ids(pool) == ["waiting"])
    cancel.cancel()
    thread.join(5)
    assert started == ["waiting stopped"] and waiting_ids(pool) == []


def test_a_pool_without_workers_says_so():
    from pipelines.distributed.pool import WorkerStartError

    with pytest.raises(WorkerStartError, match="not started"):
        WorkerPool(manager_config=None)._take_worker(_PoolJob("x", JobTag(), "m", "p", 0), CancelToken())
