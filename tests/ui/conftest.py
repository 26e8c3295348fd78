"""A live Likeness app on a free port, on the demo model, for browser and API tests."""
from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(root: Path, **server):
    """Settings -> manager -> UI, as app.py does, without blocking. Returns (app info, the Blocks)."""
    from app import build_manager
    from pipelines.quiet import quiet_libraries
    from settings import load_settings
    from ui.app import launch
    from ui.server import ServerOptions

    quiet_libraries()
    settings, store = load_settings(root / "settings.json", {
        "models_dir": str(root / "models"), "outputs_dir": str(root / "outputs"), "cache_dir": str(root / "cache"), "device": "cpu",
    })
    manager = build_manager(settings)
    port = free_port()
    demo = launch(manager, settings, store, ServerOptions(port=port, **server), block=False)
    return {"url": f"http://127.0.0.1:{port}", "manager": manager, "settings": settings, "store": store, "root": root}, demo


@pytest.fixture(scope="module")
def live_app(tmp_path_factory):
    info, demo = start_app(tmp_path_factory.mktemp("app"))
    yield info
    demo.close()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium is not installed (bash setup.sh test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield instance
        instance.close()


def open_page(browser, url: str):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#generate")
    return page


def keep_screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture
def page(browser, live_app, request):
    page = open_page(browser, live_app["url"])
    yield page
    keep_screenshot(page, request.node.name)
    page.context.close()


def show_settings(page) -> None:
    """The Settings tab with every section open (only the first starts open; a test reads fields anywhere)."""
    page.get_by_role("tab", name="Settings").click()
    page.wait_for_selector("[id^=settings_section_] .label-wrap", state="visible")
    page.evaluate("""() => document.querySelectorAll('[id^=settings_section_] > .label-wrap:not(.open)')
                          .forEach((title) => title.click())""")
    page.wait_for_selector("#setting_preview_every input", state="visible")


def click_for_outcome(page, button: str, readout: str, pattern: str, timeout_ms: int) -> str:
    """Click `button`, then `readout`'s settled text once it shows an outcome matching `pattern` (a JS regex) written
    after the click: the readout still shows the last run's outcome when the button is pressed again, and a wait that
    matched it would read the new run half way (seen on a loaded machine). A MutationObserver set before the click
    notes when the readout stops matching (a run always writes "starting…" first; Gradio's progress timer alone keeps
    the old text), and only a match after that counts, so the same outcome twice is waited for too."""
    page.evaluate("""([selector, pattern]) => {
        window.__likenessOutcome?.disconnect();
        const element = document.querySelector(selector), outcome = new RegExp(pattern);
        window.__likenessLeft = !outcome.test(element.innerText || '');
        window.__likenessOutcome = new MutationObserver(() => {
            if (!outcome.test(element.innerText || '')) window.__likenessLeft = true;
        });
        window.__likenessOutcome.observe(element, {subtree: true, childList: true, characterData: true});
    }""", [readout, pattern])
    page.click(button)
    page.wait_for_function("""([selector, pattern]) => window.__likenessLeft
        && new RegExp(pattern).test(document.querySelector(selector)?.innerText || '')""", arg=[readout, pattern], timeout=timeout_ms)
    return settled_text(page, readout)


def settled_text(page, selector: str, timeout_ms: int = 30_000) -> str:
    """An element's text once Gradio's progress timer ("0.1s") has left it: the run's last readout, without the timer
    that shows in it for a moment after the event ends (seen in CI on a busy machine)."""
    page.wait_for_function(f"!/^\\s*\\d+(\\.\\d+)?s\\b/.test(document.querySelector({selector!r})?.innerText || '')", timeout=timeout_ms)
    # A chained event (before/after, Generate forever) can show the timer again a moment later: cut it off the text too.
    return re.sub(r"^\s*\d+(\.\d+)?s\s*", "", page.inner_text(selector)).strip()
