"""Generation workers on a real local Ray cluster: 2 CPU workers, the random demo and a tiny SD 1.5.

The cluster is the session's `pool` (tests/distributed/conftest.py). Tests run in file order and
some rely on the workers' job counts (this file runs before the other files that use the pool).
"""
from __future__ import annotations

import threading
import time

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-scale.txt")

from pipelines.catalog import DEMO_MODEL_NAME  # noqa: E402
from pipelines.errors import GenerationCancelled, ModelNotFound  # noqa: E402
from pipelines.generate import CancelToken  # noqa: E402
from pipelines.infotext import param_pairs  # noqa: E402
from pipelines.request import GenerationRequest  # noqa: E402
from pipelines.telemetry import Notice, StepDone  # noqa: E402


def demo_job(steps=6, seed=1, size=128, save=False, model=DEMO_MODEL_NAME) -> GenerationRequest:
    return GenerationRequest(model=model, prompt="a red circle", steps=steps, width=size, height=size, seed=seed, save=save)


def worker_of(result) -> str:
    return dict(param_pairs(result.images[0].infotext.splitlines()[-1]))["Worker"]


def in_thread(fn):
    box = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as error:  # re-raised by the test
            box["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_two_jobs_run_at_once_on_two_workers(pool):
    seen_together = []
    threads = [in_thread(lambda seed=seed: pool.generate(demo_job(steps=20, seed=seed, save=True))) for seed in (1, 2)]
    wait_for(lambda: (seen_together.append(set(pool.running().values())) or len(seen_together[-1]) == 2)
             or not any(t.is_alive() for t, _ in threads))
    for thread, _ in threads:
        thread.join(120)
    results = [box["result"] for _, box in threads]
    assert {"worker-1", "worker-2"} in seen_together, "the two jobs never ran at the same time on both workers"
    assert {worker_of(r) for r in results} == {"worker-1 (cpu)", "worker-2 (cpu)"}
    for result in results:  # saved once, by the pool, with the Worker key in the PNG's parameters
        assert result.images[0].path and "Worker: worker-" in open(result.images[0].path, "rb").read().decode("latin-1")


def test_same_seed_gives_the_same_image_on_two_workers(pool):
    threads = [in_thread(lambda: pool.generate(demo_job(steps=12, seed=42))) for _ in range(2)]
    for thread, _ in threads:
        thread.join(120)
    first, second = (box["result"] for _, box in threads)
    assert worker_of(first) != worker_of(second)
    assert first.images[0].image.tobytes() == second.images[0].image.tobytes()
    assert first.seeds == second.seeds == [42]


def test_a_model_goes_to_the_worker_that_holds_it(pool):
    first = pool.generate(demo_job(model="tiny-sd15", size=64, steps=2))
    holder = worker_of(first).split()[0]
    statuses = {row["name"]: row for row in pool.statuses()}
    assert "tiny-sd15" in [record["name"] for record in statuses[holder]["loaded"]]
    other = next(name for name in statuses if name != holder)
    assert "tiny-sd15" not in [record["name"] for record in statuses[other]["loaded"]]
    # Keep sending its jobs until the holder has done more than the other worker: from then on the least
    # busy rule alone would pick the other one, so only affinity keeps them on the holder. (The jobs done
    # before this test depend on how earlier tests were spread, so the count is read, not assumed.)
    for seed in range(3, 3 + max(3, statuses[other]["jobs_done"] - statuses[holder]["jobs_done"] + 2)):
        again = pool.generate(demo_job(model="tiny-sd15", size=64, steps=2, seed=seed))
        assert worker_of(again).split()[0] == holder
    statuses = {row["name"]: row for row in pool.statuses()}
    assert statuses[other]["jobs_done"] < statuses[holder]["jobs_done"]


def test_stop_reaches_the_worker(pool):
    steps, cancel = [], CancelToken()
    thread, box = in_thread(lambda: pool.generate(demo_job(steps=150, size=512), listener=steps.append, cancel=cancel))
    assert wait_for(lambda: any(isinstance(e, StepDone) for e in steps) or not thread.is_alive()), "no step event reached the caller"
    stopped_at = time.monotonic()
    cancel.cancel()
    thread.join(60)
    assert isinstance(box.get("error"), GenerationCancelled)
    assert time.monotonic() - stopped_at < 10
    assert max(e.index for e in steps if isinstance(e, StepDone)) < 150
    assert wait_for(lambda: all(row["state"] == "idle" for row in pool.statuses()), 30)


def test_skip_reaches_the_worker_and_the_next_batch_runs(pool):
    import dataclasses

    steps, cancel = [], CancelToken()
    request = dataclasses.replace(demo_job(steps=40, size=256, seed=11), batch_count=2)
    thread, box = in_thread(lambda: pool.generate(request, listener=steps.append, cancel=cancel))
    assert wait_for(lambda: any(isinstance(e, StepDone) for e in steps) or not thread.is_alive())
    cancel.skip()
    thread.join(120)
    result = box["result"]
    assert len(result.images) == 1 and result.seeds == [12]  # the first batch (seed 11) was dropped


def test_a_model_a_worker_lacks_is_named_with_the_worker_and_every_worker_reports_its_state(pool):
    with pytest.raises(ModelNotFound, match=r"^On worker-\d \(cpu, .*\): No model named 'nope'"):
        pool.generate(demo_job(model="nope"))
    rows = pool.statuses()
    assert [row["name"] for row in rows] == ["worker-1", "worker-2"]
    for row in rows:
        assert row["device"] == "cpu" and row["state"] == "idle" and row["jobs_done"] >= 1 and row["running"] == []
        assert all(record["level"] in ("RAM", "VRAM") for record in row["loaded"])


def test_a_worker_killed_mid_job_is_restarted_and_the_job_retried(pool):
    events = []
    thread, box = in_thread(lambda: pool.generate(demo_job(steps=60, seed=5, size=256), listener=events.append))
    assert wait_for(lambda: sum(isinstance(e, StepDone) for e in events) >= 2 or not thread.is_alive())
    victim = next(iter(pool.running().values()))
    ray.kill(pool.handle(victim), no_restart=True)
    thread.join(180)
    assert "error" not in box, box.get("error")
    result = box["result"]
    notices = [e.text for e in events if isinstance(e, Notice) and "retried" in e.text]
    assert notices and victim in notices[0]
    assert worker_of(result).split()[0] != victim
    assert result.seeds == [5] and result.images[0].image.size == (256, 256)
    # The dead worker was restarted: both answer again.
    assert wait_for(lambda: all(row["state"] in ("idle", "busy") for row in pool.statuses(timeout_s=5)), 120)
    assert {row["name"] for row in pool.statuses()} == {"worker-1", "worker-2"}
