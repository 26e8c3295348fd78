"""Each browser session's Stop reaches its own run, queued or running, in every tab that generates;
one session never sees another's latents; four clients with random cancels leave nothing locked."""
from __future__ import annotations

import random
import re
import threading
import time

import pytest
from gradio_client import Client

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.bench.tiny_face import HANKS
from tests.ui.conftest import keep_screenshot, open_page
from tests.ui.test_experiments_tab import choose, fill_values
from tests.ui.test_face_tab import face_app  # noqa: F401  (the module fixture: tiny SDXL + every face file)
from tests.ui.test_generate_tab import set_number
from ui.generate_tab import FORM_FIELDS

STEP = re.compile(r"step (\d+)/(\d+)")


def text_of(page, selector: str) -> str:
    return page.evaluate(f"(document.querySelector({selector!r})?.innerText || '')")


def wait_for_text(page, selector: str, pattern: str, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = text_of(page, selector)
        if re.search(pattern, text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"{selector} never matched {pattern!r} within {timeout} s: {text_of(page, selector)!r}")


def nothing_locked(manager, timeout: float = 60) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not manager._generation_lock.locked() and not any(r.locked for r in manager.cache.records()):
            return True
        time.sleep(0.1)
    return False


def form(**changes) -> dict:
    values = dict(model=DEMO_MODEL_NAME, prompt="a session test", negative_prompt="", steps=2, cfg_scale=7.0, seed=1, width=64, height=64,
                  sampler="Euler", batch_size=1, batch_count=1, vae_dtype="auto", deepcache_interval=1, deepcache_branch=0,
                  deepcache_schedule="uniform", flux_cache="off", flux_cache_threshold=0.08, approximate_cache=False,
                  hires_scale=1.0, hires_upscaler="Latent", hires_steps=0, hires_denoising=0.7, face_detail=False, face_detail_strength=0.4,
                  face_detail_steps=0, face_detail_prompt="", face_detail_faces="", clip_skip=1, styles=[],
                  subseed=-1, subseed_strength=0.0, tiling=False, hires_prompt="", hires_negative_prompt="", vae="Automatic",
                  schedule_type="Automatic", hires_sampler="", hires_schedule_type="", seed_resize_from_w=0, seed_resize_from_h=0,
                  hires_checkpoint="", refiner_checkpoint="None", refiner_switch_at=0.8,
                  token_merging_ratio=0.0)
    values.update(changes)
    assert list(values) == list(FORM_FIELDS)
    return values


def test_stop_in_the_face_tab_stops_the_face_run(browser, face_app):  # noqa: F811
    page = open_page(browser, face_app["url"])
    try:
        set_number(page, "steps", 150)
        set_number(page, "width", 256)
        set_number(page, "height", 256)
        page.get_by_role("tab", name="Face").click()
        page.locator("#face_photos input[type=file]").set_input_files(str(HANKS))
        wait_for_text(page, "#face_detect_info", "Detected")
        page.click("#face_generate")
        reached = int(STEP.search(wait_for_text(page, "#face_readout", r"step ([3-9]|\d\d+)/150", timeout=120)).group(1))
        page.click("#face_stop")
        readout = wait_for_text(page, "#face_readout", "Stopped", timeout=60)
        keep_screenshot(page, "face_tab_stopped")
        last = STEP.search(readout)
        assert last is None or int(last.group(1)) < 150, "the face run went on to the end"
        assert reached < 150
        assert nothing_locked(face_app["manager"]), "the model stayed locked after Stop"
    finally:
        page.context.close()


def test_cancel_in_the_experiments_tab_stops_the_grid(browser, live_app):
    page = open_page(browser, live_app["url"])
    try:
        page.fill("#prompt textarea", "a long grid")
        set_number(page, "width", 128)
        set_number(page, "height", 128)
        page.get_by_role("tab", name="Experiments").click()
        choose(page, "exp_x_setting", "Steps")
        fill_values(page, "exp_x_values", "20-25")
        choose(page, "exp_y_setting", "CFG scale")
        fill_values(page, "exp_y_values", "1-5")
        page.locator("#exp_confirm input").check()
        page.click("#exp_run")
        wait_for_text(page, "#exp_progress", r"run ([3-9]|\d\d+) of", timeout=120)
        page.click("#exp_cancel")
        progress = wait_for_text(page, "#exp_progress", r"Stopped: \d+ of 30 cells", timeout=90)
        keep_screenshot(page, "experiment_cancelled")
        finished = int(re.search(r"Stopped: (\d+) of 30", progress).group(1))
        assert finished < 30, "the grid ran to the end after Cancel"
        assert nothing_locked(live_app["manager"])
    finally:
        page.context.close()


def test_stop_while_queued_cancels_the_waiting_run(browser, live_app):
    first = open_page(browser, live_app["url"])
    second = open_page(browser, live_app["url"])
    outputs = live_app["root"] / "outputs"
    try:
        first.fill("#prompt textarea", "the run ahead")
        set_number(first, "steps", 150)
        set_number(first, "width", 512)
        set_number(first, "height", 512)
        first.click("#generate")
        wait_for_text(first, "#readout", r"step \d+/150")
        second.fill("#prompt textarea", "the queued run that is stopped")
        set_number(second, "steps", 2)
        set_number(second, "width", 64)
        set_number(second, "height", 64)
        second.click("#generate")
        time.sleep(1.0)  # let the click reach the server: it now waits behind the first run
        second.click("#stop")
        wait_for_text(second, "#readout", "Stopped before it started")
        saved_before = set(outputs.rglob("*.png")) if outputs.exists() else set()
        first.click("#stop")
        wait_for_text(first, "#readout", "Stopped")
        time.sleep(2.0)  # the queued job now gets its turn, and must end at once
        readout = wait_for_text(second, "#readout", "Stopped before it started")
        keep_screenshot(second, "queued_run_stopped")
        assert "step" not in readout.lower()
        assert second.locator("#gallery img").count() == 0
        saved_after = set(outputs.rglob("*.png")) if outputs.exists() else set()
        assert saved_after == saved_before, "the stopped queued run still generated and saved an image"
        # The next click of that tab runs normally: the cancelled token is not left behind.
        second.click("#generate")
        second.wait_for_selector("#breakdown table", timeout=90000)
    finally:
        first.context.close()
        second.context.close()


def test_redecode_only_sees_its_own_sessions_latents(live_app):
    owner, stranger = Client(live_app["url"], verbose=False), Client(live_app["url"], verbose=False)
    owner.predict(*form(prompt="my private image", seed=11).values(), api_name="/generate")
    message, gallery = stranger.predict("fp32", api_name="/redecode")
    assert "Nothing to re-decode" in message and not isinstance(gallery, list)  # no images: the gallery is left as it was
    message, gallery = owner.predict("fp32", api_name="/redecode")
    assert "Decoded in **fp32**" in message and len(gallery) == 1


def test_four_clients_with_random_cancels_leave_nothing_locked(live_app):
    rng = random.Random(7)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def client_run(number: int) -> None:
        try:
            client = Client(live_app["url"], verbose=False)
            for round_ in range(3):
                steps = rng.choice([2, 6, 40])
                job = client.submit(*form(prompt=f"client {number} round {round_}", steps=steps, seed=number * 10 + round_).values(),
                                    api_name="/generate")
                if rng.random() < 0.4:
                    time.sleep(rng.uniform(0.0, 1.5))
                    client.predict(api_name="/cancel")
                readout = job.result(timeout=300)[0]
                outcomes.append("stopped" if "Stopped" in readout else "done" if "⚠" not in readout else readout)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=client_run, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    assert len(outcomes) == 12 and set(outcomes) <= {"stopped", "done"}, outcomes
    assert "done" in outcomes
    assert nothing_locked(live_app["manager"])
    # And the server still serves a plain run.
    assert Client(live_app["url"], verbose=False).predict(*form().values(), api_name="/generate")[2]
