"""`DispatchingManager` over the session's Ray pool (2 CPU workers): what the tabs, the API and the
experiment runner call on "the manager" when `--workers ray` is on."""
from __future__ import annotations

import threading

import pytest

pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-scale.txt")

from pipelines.catalog import DEMO_MODEL_NAME  # noqa: E402
from pipelines.distributed.front import REDECODE_UNAVAILABLE, DispatchingManager  # noqa: E402
from pipelines.errors import InvalidRequest, ModelNotFound  # noqa: E402
from pipelines.experiments.plan import AxisSpec, Experiment, build_plan  # noqa: E402
from pipelines.experiments.runner import run_experiment  # noqa: E402
from pipelines.generate import CancelToken  # noqa: E402
from pipelines.jobs import tagged  # noqa: E402
from pipelines.manager import PipelineManager  # noqa: E402
from pipelines.request import GenerationRequest  # noqa: E402
from pipelines.telemetry import StepDone  # noqa: E402
from tests.distributed.test_ray_workers import demo_job, in_thread, wait_for, worker_of  # noqa: E402
from ui.app import status_line  # noqa: E402
from ui.jobs import Job, board_for  # noqa: E402
from ui.models_tab import catalog_rows  # noqa: E402
from ui.workers_view import worker_table  # noqa: E402


@pytest.fixture(scope="module")
def front(pool):
    return DispatchingManager(PipelineManager(pool.manager_config), pool)


class OneLane(DispatchingManager):
    """The same pool, one job at a time: what one worker would do."""

    parallel_jobs = 1


def test_generate_runs_on_a_worker_and_its_events_reach_the_bus(front):
    on_bus = []
    unsubscribe = front.bus.subscribe(on_bus.append)
    try:
        result = front.generate(demo_job(steps=3, seed=4))
    finally:
        unsubscribe()
    assert worker_of(result).startswith("worker-")
    assert [e.index for e in on_bus if isinstance(e, StepDone)] == [1, 2, 3]  # the job board and A1111 progress read the bus
    assert front.parallel_jobs == 2 and board_for(front)._turn._value == 2


def test_an_unknown_model_is_refused_before_any_worker(front):
    with pytest.raises(ModelNotFound, match="No model named 'nope'"):
        front.generate(demo_job(model="nope"))


def test_redecode_says_it_is_not_available_for_worker_jobs(front):
    with pytest.raises(InvalidRequest) as caught:
        front.redecode(None, "fp32")
    assert str(caught.value) == REDECODE_UNAVAILABLE and "Ray workers" in REDECODE_UNAVAILABLE


def test_status_bar_and_models_tab_show_every_worker(front):
    front.load("tiny-sd15")
    table = worker_table(front)
    assert [row[0] for row in table] == ["worker-1", "worker-2"]
    for name, device, state, models, jobs, running, restarts, host in table:
        assert state in ("idle", "busy") and isinstance(jobs, int) and host
    assert any("tiny-sd15 (" in row[3] for row in table)
    line = status_line(front)
    assert line.startswith("**Workers** 2: worker-1 (cpu, ") and "worker-2 (cpu, " in line and " jobs, " in line
    in_memory = {row[0]: row[4] for row in catalog_rows(front)}
    assert in_memory["tiny-sd15"].startswith("worker-") and in_memory["tiny-sd15"].endswith(("RAM", "VRAM"))
    assert front.unload("tiny-sd15") is True
    assert "tiny-sd15" not in {row[0]: row[4] for row in catalog_rows(front) if row[4]}


def test_caches_are_added_up_over_the_workers(front):
    front.generate(GenerationRequest(model=DEMO_MODEL_NAME, prompt="a blue square", steps=2, width=64, height=64, seed=1))
    stats = {cache.name: cache.stats() for cache in front.caches()}
    prompt = stats["prompt embeddings"]
    assert prompt.name == "prompt embeddings (per worker, 2 added up)"
    assert prompt.misses >= 1
    approximate = stats["approximate latents"]
    assert approximate.name.startswith("approximate latents (per worker")  # faiss: each worker its own, said so


def test_two_jobs_take_two_turns_on_the_board_at_once(front):
    board = board_for(front)
    first, second = (Job("browser", "txt2img", token=None, steps=1, batch_count=1) for _ in range(2))

    inside = threading.Barrier(3, timeout=10)

    def hold(job):
        with board.turn(job):
            inside.wait()
            inside.wait()

    threads = [threading.Thread(target=hold, args=(job,)) for job in (first, second)]
    for thread in threads:
        thread.start()
    inside.wait()  # both hold a turn now: one per worker
    assert {id(job) for job in board.running()} == {id(first), id(second)}
    assert board.current() in (first, second)
    inside.wait()
    for thread in threads:
        thread.join()
    assert board.running() == []


def grid(seed: int = 7) -> Experiment:
    base = {"model": DEMO_MODEL_NAME, "prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "seed": seed}
    return Experiment(base, [AxisSpec("steps", "2,3"), AxisSpec("cfg_scale", "3,7")], warmup=False)


def test_a_grid_split_across_two_workers_gives_the_same_cells_as_one(front, pool):
    plan = build_plan(grid(), front)
    split = run_experiment(front, plan)
    one = run_experiment(OneLane(front._manager, pool), plan)
    assert split.status() == one.status() == "Done: 4 of 4 cells."
    assert list(split.cells) == list(one.cells) == [0, 1, 2, 3]
    assert {worker_of(cell.runs[0]).split()[0] for cell in split.cells.values()} == {"worker-1", "worker-2"}
    for index in split.cells:
        assert split.cells[index].image.tobytes() == one.cells[index].image.tobytes(), split.cells[index].cell.label


class JobWatch:
    """Samples `front.jobs()` in a thread: every job seen, with its first waiting and running views."""

    def __init__(self, front):
        self.front, self.waiting, self.running = front, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.is_set():
            for job in self.front.jobs():
                (self.waiting if job.state == "waiting" else self.running).setdefault(job.id, job)
            self._stop.wait(0.01)

    def stop(self):
        self._stop.set()
        self._thread.join(5)


def test_an_experiment_takes_one_turn_while_its_cells_use_both_workers_and_another_users_job_gets_the_next_free_worker(front):
    base = {"model": DEMO_MODEL_NAME, "prompt": "a red circle", "steps": 10, "width": 128, "height": 128, "seed": 3}
    plan = build_plan(Experiment(base, [AxisSpec("steps", "10,12"), AxisSpec("cfg_scale", "3,7")], warmup=False), front)
    board = board_for(front)
    watch = JobWatch(front)
    try:
        def run_grid():  # as the Experiments tab does: one turn on the board for the whole grid
            with tagged(owner="tab-a", source="browser", kind="experiment"):
                with board.turn(Job("browser", "experiment", CancelToken(), steps=12, batch_count=1)):
                    return run_experiment(front, plan)

        grid_thread, grid_box = in_thread(run_grid)
        both_busy = lambda: sorted(j.worker for j in front.jobs() if j.state == "running") == ["worker-1", "worker-2"]  # noqa: E731
        assert wait_for(both_busy, 120), "the grid's cells never ran on both workers at once"
        assert [job.kind for job in board.running()] == ["experiment"]  # the grid holds one of the two turns

        user_request = GenerationRequest(model=DEMO_MODEL_NAME, prompt="a blue square", steps=4, width=64, height=64, seed=9)

        def run_user():  # as a Generate tab does: its own turn, then the manager
            with tagged(owner="tab-b", source="browser", kind="txt2img"):
                with board.turn(Job.for_request("browser", "txt2img", user_request, CancelToken())):
                    return front.generate(user_request)

        user_thread, user_box = in_thread(run_user)
        user_thread.join(180)
        grid_thread.join(300)
    finally:
        watch.stop()
    assert "error" not in user_box and "error" not in grid_box, (user_box.get("error"), grid_box.get("error"))
    grid_result = grid_box["result"]
    assert grid_result.status() == "Done: 4 of 4 cells."
    assert {worker_of(cell.runs[0]).split()[0] for cell in grid_result.cells.values()} == {"worker-1", "worker-2"}

    [user_wait] = [job for job in watch.waiting.values() if job.tag.owner == "tab-b"]
    [user_run] = [job for job in watch.running.values() if job.tag.owner == "tab-b"]
    assert user_wait.position == 1 and user_wait.tag.kind == "txt2img"  # both workers were busy: it waited, first in line
    assert user_run.worker in ("worker-1", "worker-2") and worker_of(user_box["result"]) == f"{user_run.worker} (cpu)"
    cells = [job for job in watch.running.values() if job.tag.kind == "experiment cell"]
    assert len(cells) == 4 and {job.tag.owner for job in cells} == {"tab-a"} and all(job.tag.yields for job in cells)
    started_while_it_waited = [job for job in cells if user_wait.since < job.since < user_run.since]
    assert started_while_it_waited == [], "an experiment cell took a worker ahead of the waiting job"
    assert any(job.since > user_run.since for job in cells), "the user's job only ran after the whole grid"


def test_styles_are_applied_here_and_workers_get_the_finished_prompt(pool, tmp_path):
    """The styles file is this machine's (the workers never read it): the front applies it before dispatching."""
    import dataclasses

    from pipelines.infotext import parse_infotext

    styles = tmp_path / "styles.csv"
    styles.write_text("name,prompt,negative_prompt\nWhite,{prompt} on a white background,blurry\n")
    here = DispatchingManager(PipelineManager(dataclasses.replace(pool.manager_config, styles_file=styles)), pool)
    result = here.generate(dataclasses.replace(demo_job(steps=2, seed=5), prompt="a red circle", styles=("White",)))
    params = parse_infotext(result.images[0].infotext)
    assert worker_of(result).startswith("worker-")
    assert params["Prompt"] == "a red circle on a white background" and params["Negative prompt"] == "blurry"
