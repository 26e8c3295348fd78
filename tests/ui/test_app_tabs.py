"""The app's tabs in a real browser: stop, queue, PNG Info, settings, and the browser going away."""
from __future__ import annotations

import json
import re
import time

from PIL import Image

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.request import GenerationRequest
from tests.ui.conftest import keep_screenshot, open_page, show_settings, start_app
from tests.ui.test_generate_tab import generate_small, set_number

STEP = re.compile(r"step (\d+)/(\d+)")


def wait_for_step(page, at_least: int, timeout: float = 60) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        match = STEP.search(page.inner_text("#readout"))
        if match and int(match.group(1)) >= at_least:
            return int(match.group(1))
        time.sleep(0.1)
    raise AssertionError(f"no step >= {at_least} within {timeout} s: {page.inner_text('#readout')!r}")


def start_long_run(page, steps: int = 150) -> None:
    page.fill("#prompt textarea", "a long run")
    set_number(page, "steps", steps)
    set_number(page, "width", 512)
    set_number(page, "height", 512)
    page.click("#generate")


def test_stop_mid_run_then_generate_again(page, live_app):
    start_long_run(page)
    reached = wait_for_step(page, 3)
    page.click("#stop")
    page.wait_for_function("(document.querySelector('#readout')?.innerText || '').includes('Stopped')", timeout=30000)
    last = int(STEP.search(page.inner_text("#readout")).group(1)) if STEP.search(page.inner_text("#readout")) else reached
    assert last < 150, "the run was not interrupted"
    assert not any(r.locked for r in live_app["manager"].cache.records()), "the model stayed locked after Stop"
    set_number(page, "steps", 2)
    set_number(page, "width", 128)
    set_number(page, "height", 128)
    page.click("#generate")
    page.wait_for_selector("#breakdown table", timeout=60000)


def test_png_info_round_trip_into_generate(page, live_app, tmp_path):
    result = live_app["manager"].generate(GenerationRequest(
        model=DEMO_MODEL_NAME, prompt="round trip, with a comma", negative_prompt="blurry", steps=7, cfg_scale=5.5,
        seed=777, width=136, height=128, sampler="DPM++ 2M Karras",
    ))
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#png_upload input[type=file]").set_input_files(result.images[0].path)
    page.wait_for_function("(document.querySelector('#png_message')?.innerText || '').includes('Read')", timeout=30000)
    assert "round trip, with a comma" in page.inner_text("#png_table")
    page.click("#png_send")
    page.wait_for_selector("#prompt textarea", state="visible")
    page.wait_for_function("(document.querySelector('#prompt textarea')?.value || '') === 'round trip, with a comma'", timeout=15000)
    assert page.input_value("#negative_prompt textarea") == "blurry"
    assert page.input_value("#steps input[type=number]") == "7"
    assert page.input_value("#cfg input[type=number]") == "5.5"
    assert page.input_value("#seed input") == "777"
    assert page.input_value("#width input[type=number]") == "136"
    assert page.input_value("#height input[type=number]") == "128"
    assert page.input_value("#sampler input") == "DPM++ 2M"  # A1111's older combined name: the sampler and its schedule type
    assert page.input_value("#schedule_type input") == "Karras"


def test_png_info_bad_files_give_messages(page, tmp_path):
    page.get_by_role("tab", name="PNG Info").click()
    plain = tmp_path / "plain.png"
    Image.new("RGB", (32, 32), "red").save(plain)
    page.locator("#png_upload input[type=file]").set_input_files(str(plain))
    page.wait_for_function("(document.querySelector('#png_message')?.innerText || '').includes('no generation parameters')", timeout=30000)
    page.click("#png_send")
    page.wait_for_function("(document.querySelector('#png_message')?.innerText || '').includes('Nothing to send')", timeout=15000)


def test_setting_saved_and_back_after_restart(page, live_app, browser):
    show_settings(page)
    field = page.locator("#setting_preview_every input")
    field.fill("3")
    page.click("#settings_save")
    page.wait_for_function("(document.querySelector('#settings_message')?.innerText || '').includes('Saved')", timeout=15000)
    assert live_app["manager"].config.preview_every == 3, "the change did not apply to the running app"
    stored = json.loads((live_app["root"] / "settings.json").read_text())
    assert stored["preview_every"] == 3

    # Invalid values are refused with the field named, and nothing is written.
    field.fill("-4")
    page.click("#settings_save")
    page.wait_for_function("(document.querySelector('#settings_message')?.innerText || '').includes('Not saved')", timeout=15000)
    assert "Live preview every N steps" in page.inner_text("#settings_message")
    assert json.loads((live_app["root"] / "settings.json").read_text())["preview_every"] == 3

    restarted, demo = start_app(live_app["root"])
    try:
        second = open_page(browser, restarted["url"])
        show_settings(second)
        assert second.input_value("#setting_preview_every input") == "3"
        second.context.close()
    finally:
        demo.close()


def test_settings_file_corrupted_or_deleted_while_running(page, live_app):
    path = live_app["root"] / "settings.json"
    path.write_text("{ not json")
    show_settings(page)
    page.locator("#setting_preview_every input").fill("4")  # only changed fields are saved
    page.click("#settings_save")
    page.wait_for_function("(document.querySelector('#settings_message')?.innerText || '').includes('Saved')", timeout=15000)
    assert isinstance(json.loads(path.read_text()), dict)
    path.unlink()
    page.get_by_role("tab", name="Generate").click()
    generate_small(page, "after delete", steps=2, size=128, timeout_ms=60000)
    assert json.loads(path.read_text())["last_generation"]["prompt"] == "after delete"


def test_last_used_values_come_back_after_restart(live_app, browser):
    restarted, demo = start_app(live_app["root"])
    try:
        page = open_page(browser, restarted["url"])
        remembered = restarted["settings"].last_generation
        assert remembered, "nothing was remembered"
        assert page.input_value("#prompt textarea") == remembered["prompt"]
        assert page.input_value("#steps input[type=number]") == str(remembered["steps"])
        page.context.close()
    finally:
        demo.close()


def test_two_tabs_queue_one_after_the_other(browser, live_app):
    first = open_page(browser, live_app["url"])
    second = open_page(browser, live_app["url"])
    try:
        start_long_run(first, steps=60)
        wait_for_step(first, 2)
        second.fill("#prompt textarea", "second tab")
        set_number(second, "steps", 2)
        set_number(second, "width", 128)
        set_number(second, "height", 128)
        second.click("#generate")
        # Gradio shows the place in the queue on the waiting outputs.
        second.wait_for_function("/queue/i.test(document.body.innerText)", timeout=20000)
        keep_screenshot(second, "second_tab_waiting_in_queue")
        assert not second.locator("#breakdown table").count(), "the second tab ran while the first held the GPU"
        first.click("#stop")
        second.wait_for_selector("#breakdown table", timeout=90000)
    finally:
        first.context.close()
        second.context.close()


def test_browser_closed_mid_generation_releases_the_lock(browser, live_app):
    doomed = open_page(browser, live_app["url"])
    start_long_run(doomed)
    wait_for_step(doomed, 2)
    doomed.context.close()
    manager = live_app["manager"]
    deadline = time.time() + 60
    while time.time() < deadline and (any(r.locked for r in manager.cache.records()) or manager._generation_lock.locked()):
        time.sleep(0.2)
    assert not any(r.locked for r in manager.cache.records()), "the model stayed locked after the browser left"
    result = manager.generate(GenerationRequest(model=DEMO_MODEL_NAME, prompt="next", steps=2, width=128, height=128))
    assert result.images
