"""The GPU queue shared by the API and the browser tabs: progress follows whichever job runs,
interrupt stops it, and an API job and a browser (gradio_client) job take turns."""
from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time

import httpx
from gradio_client import Client
from PIL import Image

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.telemetry import StepDone
from ui.jobs import board_for

LONG = {"prompt": "a long run", "steps": 150, "width": 256, "height": 256, "n_iter": 20, "seed": 3}


def browser_form(prompt: str, steps: int, size: int) -> list:
    return [DEMO_MODEL_NAME, prompt, "", steps, 7.0, 1, size, size, "Euler", 1, 1, "auto", 1, 0, "uniform", "off", 0.08]


def wait_for(condition, timeout: float = 120, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class HoldAtFirstStep:
    """Holds the running generation at its first step until released: the test decides when it goes on,
    whatever the machine's speed."""

    def __init__(self, manager):
        self.reached, self.go = threading.Event(), threading.Event()
        self._unsubscribe = manager.bus.subscribe(self._on_event)

    def _on_event(self, event):
        if isinstance(event, StepDone) and not self.go.is_set():
            self.reached.set()
            self.go.wait(timeout=120)

    def release(self):
        self.go.set()
        self._unsubscribe()


def post_in_thread(url: str, body: dict) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run():
        outcome["response"] = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=600)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_progress_advances_during_a_run_and_interrupt_stops_it(api_app):
    client = api_app["client"]
    thread, outcome = post_in_thread(api_app["url"], LONG)
    first = wait_for(lambda: (p := client.get("/sdapi/v1/progress").json())["state"]["sampling_step"] >= 1 and p, what="a first step")
    assert first["state"]["job"] == "scripts_txt2img" and first["state"]["sampling_steps"] == 150 and first["state"]["job_count"] == 20
    later = wait_for(lambda: (p := client.get("/sdapi/v1/progress").json())["state"]["sampling_step"] > first["state"]["sampling_step"] + 5
                     and p.get("current_image") and p, what="more steps and a preview")
    assert 0 < first["progress"] < later["progress"] < 1 and later["eta_relative"] > 0
    preview = Image.open(io.BytesIO(base64.b64decode(later["current_image"])))
    assert preview.format == "PNG" and min(preview.size) > 0  # the cheap latent preview (A1111 "Approx cheap")
    assert client.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()["current_image"] is None
    asked = time.time()
    assert client.post("/sdapi/v1/interrupt").json() == {}
    thread.join(timeout=120)
    assert not thread.is_alive() and time.time() - asked < 60  # 20 x 150 steps would take minutes
    response = outcome["response"]
    assert response.status_code == 200
    info = json.loads(response.json()["info"])
    assert any("Interrupted" in w for w in info["warnings"])
    assert response.json()["images"] == []  # stopped within the first batch: nothing finished
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job"] == ""
    # The server goes on serving generations.
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "after", "steps": 2, "width": 64, "height": 64}).status_code == 200


def test_an_api_job_and_a_browser_job_take_turns(api_app):
    url, client = api_app["url"], api_app["client"]
    board = board_for(api_app["manager"])
    done_before = len(board.finished)
    hold = HoldAtFirstStep(api_app["manager"])
    try:
        thread, outcome = post_in_thread(url, {"prompt": "api first", "steps": 20, "width": 128, "height": 128, "seed": 9})
        assert hold.reached.wait(timeout=120)
        assert client.get("/sdapi/v1/progress").json()["state"]["job"] == "scripts_txt2img"
        browser = Client(url, verbose=False)
        job = browser.submit(*browser_form("browser second", 3, 64), api_name="/generate")
        wait_for(lambda: any("waiting for the GPU (held by an API txt2img job)" in str(o[0]) for o in job.outputs()),
                 what="the browser readout to say it waits")
    finally:
        hold.release()
    final = job.result(timeout=600)
    thread.join(timeout=600)
    assert outcome["response"].status_code == 200 and len(outcome["response"].json()["images"]) == 1
    assert "done" in final[0] and final[2]  # the browser job finished with its image
    api_job, browser_job = list(board.finished)[done_before:done_before + 2]
    assert (api_job.source, browser_job.source) == ("api", "browser")
    assert api_job.ended_at <= browser_job.started_at  # one after the other, never together


def test_interrupt_reaches_a_browser_job(api_app):
    client = api_app["client"]
    browser = Client(api_app["url"], verbose=False)
    hold = HoldAtFirstStep(api_app["manager"])
    try:
        job = browser.submit(*browser_form("browser long", 150, 128), api_name="/generate")
        assert hold.reached.wait(timeout=120)
        state = client.get("/sdapi/v1/progress").json()["state"]
        assert state["job"] == "txt2img" and state["sampling_step"] == 1 and state["sampling_steps"] == 150
        client.post("/sdapi/v1/interrupt")
    finally:
        hold.release()
    final = job.result(timeout=120)
    assert "Stopped" in final[0]


def test_skip_drops_the_running_batch_and_goes_on(api_app):
    client = api_app["client"]
    hold = HoldAtFirstStep(api_app["manager"])
    try:
        thread, outcome = post_in_thread(api_app["url"], {"prompt": "skip one", "steps": 10, "width": 64, "height": 64, "n_iter": 3, "seed": 4})
        assert hold.reached.wait(timeout=120)  # the first batch's first step
        client.post("/sdapi/v1/skip")
        assert client.get("/sdapi/v1/progress").json()["state"]["skipped"] is True
    finally:
        hold.release()
    thread.join(timeout=600)
    body = outcome["response"].json()
    assert len(body["images"]) == 2  # 3 batches, the first skipped
    assert json.loads(body["info"])["all_seeds"] == [5, 6]


def test_a_client_that_goes_away_does_not_keep_the_gpu(api_app):
    client, port = api_app["client"], int(api_app["url"].rsplit(":", 1)[1])
    body = json.dumps(LONG).encode()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_for(lambda: client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] >= 1, what="the job to run")
    # 20 x 150 steps would take minutes: the job stops soon after the connection closed.
    wait_for(lambda: client.get("/sdapi/v1/progress").json()["state"]["job"] == "", timeout=60, what="the job to stop")
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "next", "steps": 2, "width": 64, "height": 64}).status_code == 200


def test_progress_and_interrupt_see_an_experiment_grid(api_app):
    client = api_app["client"]
    browser = Client(api_app["url"], verbose=False)
    hold = HoldAtFirstStep(api_app["manager"])
    try:
        job = browser.submit(x_setting="steps", x_values="40, 41, 42", warm=False, confirmed=True, face_photos=None,
                             model=DEMO_MODEL_NAME, prompt="a grid", width=128, height=128, sampler="Euler", api_name="/experiment")
        assert hold.reached.wait(timeout=120)
        state = client.get("/sdapi/v1/progress").json()["state"]
        assert state["job"] == "experiment" and state["sampling_step"] == 1
        assert client.post("/sdapi/v1/interrupt").status_code == 200
    finally:
        hold.release()
    final = job.result(timeout=120)
    assert "Stopped" in final[0] and "of 3 cells" in final[0], final[0]
