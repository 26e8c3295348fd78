"""Settings from several pages at once, and a settings file this machine cannot use at start-up."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gradio_client import Client

from settings.schema import PROJECT_ROOT, SETTING_INFO
from tests.ui.conftest import free_port, keep_screenshot, open_page, show_settings, start_app


def field(page, name: str):
    return page.locator(f"#setting_{name} input, #setting_{name} textarea")


# The message's own words: Gradio's tracker writes "processing | 0.4/0.3s", "queue: 1/1 | 0.2/0.3s" (while the save
# waits its turn) or a timer into the same box, and the message under it may still be the last one.
MESSAGE_WORDS = ("() => document.querySelector('#settings_message').innerText"
                 ".replace(/(processing|queue: \\d+\\/\\d+) \\| [\\d.\\/]+s|^\\s*[\\d.]+s\\b/g, '').trim()")


def save(page, expect: str = "Saved") -> str:
    before = page.evaluate(MESSAGE_WORDS)
    page.click("#settings_save")
    handle = page.wait_for_function(
        f"([old, want]) => {{ const raw = (document.querySelector('#settings_message')?.innerText || ''); const words = ({MESSAGE_WORDS})();"
        " return words !== old && words.includes(want) && !/processing|queue: \\d+\\/\\d+|^\\s*[\\d.]+s\\b/.test(raw) && words; }",
        arg=[before, expect], timeout=15000)
    return handle.json_value()  # the text that met the wait, not a second read that may catch the next redraw


def wait_for_value(page, name: str, value: str, timeout: float = 15) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and field(page, name).input_value() != value:
        time.sleep(0.1)
    assert field(page, name).input_value() == value, f"{name}: {field(page, name).input_value()!r}, wanted {value!r}"


def test_a_stale_page_does_not_undo_another_pages_save(browser, live_app):
    path = live_app["root"] / "settings.json"
    first, second = open_page(browser, live_app["url"]), open_page(browser, live_app["url"])
    try:
        show_settings(first)
        show_settings(second)
        field(second, "preview_every").fill("7")
        assert "Live preview every N steps" in save(second)

        # The first page still shows the old preview value; it saves a different field.
        assert field(first, "preview_every").input_value() != "7"
        field(first, "ram_cache_gb").fill("3.5")
        message = save(first)
        assert "RAM cache (GiB)" in message and "Kept what was saved elsewhere" in message, message
        stored = json.loads(path.read_text())
        assert stored["preview_every"] == 7 and stored["ram_cache_gb"] == 3.5, "one page's save undid the other's"
        assert live_app["settings"].preview_every == 7 and live_app["manager"].config.preview_every == 7
        wait_for_value(first, "preview_every", "7")  # the form shows what is saved now

        # The second page saves again; the first shows it when the tab is shown again, but keeps
        # a field its user was editing and has not saved.
        field(second, "preview_every").fill("8")
        save(second)
        field(first, "max_queue_size").fill("9")
        first.get_by_role("tab", name="Generate").click()
        show_settings(first)
        wait_for_value(first, "preview_every", "8")
        assert field(first, "max_queue_size").input_value() == "9"
        keep_screenshot(first, "settings_stale_page_refreshed")
        message = save(first)
        assert "Maximum queue size" in message and "Live preview" not in message.split("Kept")[0], message
        stored = json.loads(path.read_text())
        assert (stored["preview_every"], stored["max_queue_size"], stored["ram_cache_gb"]) == (8, 9, 3.5)

        # Saving an unchanged form writes nothing.
        assert "Nothing changed" in save(first, "Nothing changed")
    finally:
        first.context.close()
        second.context.close()


def test_a_local_api_client_may_change_folders_and_pickle(live_app):
    """The remote-client rule itself is unit-tested (tests/ui/test_settings_tab.py); here the
    loopback client of a running app still saves a protected field."""
    settings = live_app["settings"]
    client = Client(live_app["url"], verbose=False)
    values = [getattr(settings, name) for name in SETTING_INFO]
    values[list(SETTING_INFO).index("allow_pickle")] = not settings.allow_pickle
    wanted = not settings.allow_pickle
    result = client.predict(*values, api_name="/save_settings")
    message = result[0] if isinstance(result, (list, tuple)) else result
    assert "Allow pickle checkpoints" in message and "Not saved" not in message, message
    assert settings.allow_pickle is wanted and live_app["manager"].config.allow_pickle is wanted
    assert json.loads((live_app["root"] / "settings.json").read_text())["allow_pickle"] is wanted


def wait_for_server(url: str, process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the app did not serve within {timeout} s:\n{log.read_text()[-3000:]}")


def test_start_with_an_unusable_device_and_a_huge_seed_in_the_file(tmp_path, browser, live_app):
    """Device cuda on a machine without CUDA and a seed of 1e30 stopped the app from starting."""
    settings_file = tmp_path / "settings.json"
    original = json.dumps({"device": "cuda", "preview_every": 2,
                           "last_generation": {"prompt": "kept prompt", "seed": 1e30, "steps": "many", "unknown": 1}})
    settings_file.write_text(original)
    if (live_app["root"] / "cache").is_dir():  # the random demo model, already built: no need to build it again
        shutil.copytree(live_app["root"] / "cache", tmp_path / "cache")
    port = free_port()
    log = tmp_path / "app.log"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "LIKENESS_SETTINGS": str(settings_file)}
    for variable in ("LIKENESS_DEVICE", "LIKENESS_MODELS_DIR", "LIKENESS_OUTPUTS_DIR", "LIKENESS_CACHE_DIR"):
        env.pop(variable, None)
    with log.open("w") as stream:
        process = subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "app.py"), "--port", str(port), "--models-dir", str(tmp_path / "models"),
             "--outputs-dir", str(tmp_path / "outputs"), "--cache-dir", str(tmp_path / "cache")],
            cwd=PROJECT_ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT)
    try:
        wait_for_server(f"http://127.0.0.1:{port}", process, log)
        page = open_page(browser, f"http://127.0.0.1:{port}")
        body = page.inner_text("body")
        keep_screenshot(page, "settings_unusable_device_start")
        assert "device to 'cuda'" in body and "cannot be used here" in body and "started with 'auto'" in body
        assert "Last-used values not restored" in page.inner_text("#last_used_warning")
        assert "seed" in page.inner_text("#last_used_warning") and "steps" in page.inner_text("#last_used_warning")
        assert page.input_value("#prompt textarea") == "kept prompt"
        page.context.close()
        (backup,) = tmp_path.glob("settings.json.bak-*")
        assert backup.read_text() == original
        stored = json.loads(settings_file.read_text())
        assert stored["device"] == "auto" and stored["preview_every"] == 2
        assert "models_dir" not in stored, "the one-off --models-dir is not written to the file"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_vae_precision_starts_from_the_settings_default_and_follows_it(browser, live_app):
    """The rule: the Generate tab's VAE precision is the Settings default, not the last-used value;
    a new default saved in Settings applies to the form at once."""
    page = open_page(browser, live_app["url"])
    try:
        show_settings(page)
        page.click("#setting_vae_dtype input")  # a dropdown of the engine's choices
        page.locator("#setting_vae_dtype").get_by_role("option", name="bf16", exact=True).click()
        assert "Default VAE precision" in save(page)
        page.get_by_role("tab", name="Generate").click()
        page.wait_for_function("document.querySelector('#vae_dtype input[value=bf16]')?.checked === true", timeout=15000)
        assert "Default from Settings: bf16" in page.inner_text("#vae_dtype")
        keep_screenshot(page, "settings_vae_default_follows")
    finally:
        page.context.close()

    # A last run in fp16 does not win over the default at the next start.
    path = live_app["root"] / "settings.json"
    stored = json.loads(path.read_text())
    stored["last_generation"] = {"prompt": "last run", "vae_dtype": "fp16"}
    path.write_text(json.dumps(stored))
    restarted, demo = start_app(live_app["root"])
    try:
        page = open_page(browser, restarted["url"])
        assert page.input_value("#prompt textarea") == "last run"
        assert page.locator("#vae_dtype input[value=bf16]").is_checked()
        assert "Default from Settings: bf16" in page.inner_text("#vae_dtype")
        page.context.close()
    finally:
        demo.close()
