"""`pipelines.jobs` in one process: job tags, and the in-process manager's queue (worker "this process")."""
from __future__ import annotations

import threading

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.jobs import IN_PROCESS, JobTag, carrying_tag, current_tag, ordinal, tagged
from pipelines.request import GenerationRequest
from pipelines.telemetry import StepDone
from ui.session import queue_markdown
from ui.workers_view import queue_rows, running_text, worker_of_session


def test_a_tag_nests_keeps_what_it_does_not_change_and_crosses_to_a_thread_only_when_carried():
    assert current_tag() == JobTag()
    seen = {}
    with tagged(owner="session-1", source="browser", kind="experiment"):
        with tagged(kind="experiment cell", yields=True):
            assert current_tag() == JobTag("session-1", "browser", "experiment cell", True)
            carried = threading.Thread(target=carrying_tag(lambda: seen.update(carried=current_tag())))
            plain = threading.Thread(target=lambda: seen.update(plain=current_tag()))
            for thread in (carried, plain):
                thread.start()
                thread.join()
        assert current_tag().kind == "experiment"
    assert current_tag() == JobTag()
    assert seen["carried"].owner == "session-1" and seen["carried"].yields
    assert seen["plain"] == JobTag()


def test_ordinals():
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101)] == ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th",
                                                                          "21st", "22nd", "101st"]


def test_the_in_process_manager_names_this_process_for_the_running_job_and_a_place_for_the_waiting_one(make_manager):
    manager = make_manager()
    assert manager.jobs() == []
    first_step, release = threading.Event(), threading.Event()

    def hold(event):
        if isinstance(event, StepDone):
            first_step.set()
            release.wait(30)

    def run(owner, listener=None, prompt="a red circle"):
        with tagged(owner=owner, source="browser", kind="txt2img"):
            manager.generate(GenerationRequest(model=DEMO_MODEL_NAME, prompt=prompt, steps=2, width=64, height=64, seed=1, save=False),
                             listener=listener)

    running = threading.Thread(target=run, args=("tab-a", hold))
    running.start()
    try:
        assert first_step.wait(60), "the first job never reached a step"
        waiting = threading.Thread(target=run, args=("tab-b", None, "a blue square"))
        waiting.start()
        assert wait_until(lambda: len(manager.jobs()) == 2)
        now, queued = manager.jobs()
        assert (now.state, now.worker, now.device, now.tag.owner, now.prompt) == ("running", IN_PROCESS, "cpu", "tab-a", "a red circle")
        assert (queued.state, queued.position, queued.tag.owner, queued.worker) == ("waiting", 1, "tab-b", "")
        assert now.where() == "this process (cpu)" and queued.where() == "waiting, 1st in line"
        # What the Models tab's queue table and a waiting tab's readout show, as tab-b sees it.
        assert queue_rows(manager, viewer="tab-b") == [["txt2img", "a browser tab", "this process (cpu)", DEMO_MODEL_NAME, "a red circle"],
                                                       ["txt2img", "you", "waiting, 1st in line", DEMO_MODEL_NAME, "a blue square"]]
        text = queue_markdown(1, "a job from a browser tab", {"eta_relative": 3.0, "textinfo": "denoise: step 1/2"},
                              [running_text(now, viewer="tab-b")])
        assert text.endswith("where: txt2img from a browser tab on this process (cpu)")
        assert worker_of_session(manager, "tab-a") == "this process (cpu)" and worker_of_session(manager, "tab-b") == ""
    finally:
        release.set()
        running.join(60)
    waiting.join(60)
    assert manager.jobs() == []


def wait_until(predicate, timeout=30.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False
