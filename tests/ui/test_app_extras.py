"""Models tab, habits (Ctrl+Enter, seed buttons), start-up messages and the named API endpoints."""
from __future__ import annotations

import shutil
import time

from gradio_client import Client

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.demo_model import demo_model_dir
from tests.ui.conftest import keep_screenshot, open_page, start_app
from tests.ui.test_generate_tab import set_number


def quick_settings(page) -> None:
    set_number(page, "steps", 2)
    set_number(page, "width", 128)
    set_number(page, "height", 128)


def test_models_tab_load_unload_and_refresh(page, live_app):
    manager = live_app["manager"]
    page.get_by_role("tab", name="Models").click()
    assert DEMO_MODEL_NAME in page.inner_text("#models_table")
    page.click("#models_load")
    page.wait_for_function("/loaded|already/.test((document.querySelector('#models_message')?.innerText || ''))", timeout=60000)
    assert any(r.name == DEMO_MODEL_NAME for r in manager.cache.records())
    assert "RAM" in page.inner_text("#models_table")
    page.click("#models_unload")
    page.wait_for_function("(document.querySelector('#models_message')?.innerText || '').includes('Unloaded')", timeout=30000)
    assert not manager.cache.records()

    # The user drops a new model folder in, presses Refresh: it shows up in the table and in Generate.
    copied = live_app["root"] / "models" / "copied-demo"
    shutil.copytree(demo_model_dir(live_app["root"] / "cache"), copied)
    try:
        page.click("#models_refresh")
        page.wait_for_function("(document.querySelector('#models_table')?.innerText || '').includes('copied-demo')", timeout=30000)
        page.get_by_role("tab", name="Generate").click()
        page.click("#model input")
        assert page.get_by_role("option", name="copied-demo").count() == 1
        page.keyboard.press("Escape")
    finally:
        shutil.rmtree(copied)
        manager.refresh()


def queue_table(page) -> list[list[str]]:
    """The Models tab's queue table as rows of cells (job, from, where, model, prompt), as the page shows them."""
    lines = [line.strip() for line in page.inner_text("#models_queue").splitlines() if line.strip()]
    body = lines[lines.index("prompt") + 1:]  # after the last column's header; every cell has text
    return [body[start:start + 5] for start in range(0, len(body), 5)]


def test_models_tab_queue_shows_this_process_running_the_tabs_job(page, live_app):
    """Without workers the queue table names "this process" and its device for the running job."""
    page.fill("#prompt textarea", "a lighthouse at dusk")
    set_number(page, "steps", 150)
    set_number(page, "width", 256)
    set_number(page, "height", 256)
    page.click("#generate")
    try:
        page.wait_for_function("/step \\d+/.test((document.querySelector('#readout')?.innerText || ''))", timeout=120000)
        page.get_by_role("tab", name="Models").click()
        page.wait_for_function("document.querySelector('#models_queue').innerText.includes('this process')", timeout=30000)
        keep_screenshot(page, "models_queue_in_process")
        assert queue_table(page) == [["txt2img", "you", "this process (cpu)", DEMO_MODEL_NAME, "a lighthouse at dusk"]]
    finally:
        page.get_by_role("tab", name="Generate").click()
        page.click("#stop")
        page.wait_for_function("(document.querySelector('#readout')?.innerText || '').includes('Stopped')", timeout=60000)
    page.get_by_role("tab", name="Models").click()
    page.wait_for_function("!document.querySelector('#models_queue').innerText.includes('lighthouse')", timeout=30000)


def test_ctrl_enter_generates_and_seed_buttons(page):
    page.fill("#prompt textarea", "keyboard")
    quick_settings(page)
    page.locator("#seed input").fill("4242")
    page.wait_for_function("window.likenessShortcuts === true", timeout=60000)  # the page's listener is in place
    page.locator("#prompt textarea").press("Control+Enter")
    page.wait_for_selector("#breakdown table", timeout=120000)
    assert "seeds 4242" in page.inner_text("#breakdown")
    page.click("#random_seed")
    page.wait_for_function("(document.querySelector('#seed input')?.value || '') === '-1'", timeout=10000)
    page.click("#reuse_seed")
    page.wait_for_function("(document.querySelector('#seed input')?.value || '') === '4242'", timeout=10000)


def test_empty_number_field_gives_a_message(page):
    page.fill("#prompt textarea", "empty seed")
    quick_settings(page)
    page.locator("#seed input").fill("")
    page.click("#generate")
    page.wait_for_function("(document.querySelector('#readout')?.innerText || '').includes('Seed is empty')", timeout=20000)


def test_corrupt_settings_file_is_kept_and_the_page_says_so(tmp_path, browser, live_app):
    root = tmp_path / "broken"
    root.mkdir()
    (root / "settings.json").write_text('{"preview_every": ')
    shutil.copytree(live_app["root"] / "cache", root / "cache")  # the demo model, already built
    info, demo = start_app(root)
    try:
        page = open_page(browser, info["url"])
        assert "could not be read" in page.inner_text("body")
        backups = list(root.glob("settings.json.bak-*"))
        assert len(backups) == 1 and backups[0].read_text() == '{"preview_every": '
        assert info["settings"].preview_every == 5  # the default
        page.context.close()
    finally:
        demo.close()


def test_api_list_and_load_models(live_app):
    client = Client(live_app["url"], verbose=False)
    models = client.predict(api_name="/list_models")
    demo = next(m for m in models if m["name"] == DEMO_MODEL_NAME)
    assert demo["family"] == "sd15" and demo["usable"]
    message, _table, _memory = client.predict(DEMO_MODEL_NAME, api_name="/load_model")
    assert "demo" in message and ("loaded" in message or "already" in message)
    message, _table, _memory = client.predict("no such model", api_name="/load_model")
    assert "No model named 'no such model'" in message


def test_api_cancel_stops_a_running_generation(live_app):
    client = Client(live_app["url"], verbose=False)
    job = client.submit(DEMO_MODEL_NAME, "api long", "", 150, 7.0, 1, 512, 512, "Euler", 1, 1, "auto", 1, 0, "uniform", "off", 0.08, api_name="/generate")
    deadline = time.time() + 60
    while time.time() < deadline and "step" not in str(job.status()) and not any("step" in str(o[0]) for o in job.outputs()):
        time.sleep(0.2)
    assert client.predict(api_name="/cancel").startswith("Stopping")
    final = job.result(timeout=60)
    assert "Stopped" in final[0]
