"""A1111's Generate forever in a real browser: ticked, each run that ends starts the next (new seeds); unticking ends
it after the run in hand; Stop unticks it; a form the app refuses shows its message once and unticks it."""
from __future__ import annotations

import time
from pathlib import Path

from tests.ui.test_generate_tab import set_number


def pngs(live_app) -> set[Path]:
    return set((Path(live_app["root"]) / "outputs").glob("20*/*.png"))


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def small_form(page, prompt: str) -> None:
    page.fill("#prompt textarea", prompt)
    set_number(page, "steps", 1)
    set_number(page, "width", 64)
    set_number(page, "height", 64)
    set_number(page, "seed", -1)


def test_generate_forever_repeats_until_unticked(page, live_app):
    small_form(page, "a yellow ring forever")
    before = pngs(live_app)
    page.locator("#generate_forever input[type=checkbox]").check()
    page.click("#generate")
    wait_for(lambda: len(pngs(live_app) - before) >= 3, 120, "three runs one after the other")
    page.locator("#generate_forever input[type=checkbox]").uncheck()
    time.sleep(3)  # the run in hand ends; no next one starts
    settled = pngs(live_app) - before
    time.sleep(3)
    assert pngs(live_app) - before == settled, "runs went on after unticking"
    seeds = {path.stem.rsplit("-", 1)[-1] for path in settled}
    assert len(seeds) == len(settled), "each repeat draws a new random seed"


def test_stop_unticks_it_and_a_refused_form_shows_its_message_once(page, live_app):
    small_form(page, "a purple heart forever")
    set_number(page, "steps", 150)  # long enough to press Stop inside it
    set_number(page, "width", 128)
    box = page.locator("#generate_forever input[type=checkbox]")
    box.check()
    page.click("#generate")
    page.wait_for_function("/step \\d+\\/150/.test(document.querySelector('#readout')?.innerText || '')", timeout=60_000)
    page.click("#stop")
    assert not box.is_checked(), "Stop unticks Generate forever"
    page.wait_for_function("(document.querySelector('#readout')?.innerText || '').includes('Stopped')", timeout=60_000)

    before = pngs(live_app)
    small_form(page, "a purple heart <lora:none:99>")  # a LoRA weight beyond +-10: refused before anything runs
    box.check()
    page.click("#generate")
    page.wait_for_function("(document.querySelector('#readout')?.innerText || '').startsWith('⚠')", timeout=60_000)
    page.wait_for_function("!document.querySelector('#generate_forever input[type=checkbox]').checked", timeout=10_000)
    time.sleep(2)
    assert pngs(live_app) == before and page.inner_text("#readout").startswith("⚠")
