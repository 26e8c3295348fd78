"""A1111's "Resize seed from" in a real browser: set under the variation seed, written in the PNG, sent back."""
from __future__ import annotations

import time

from PIL import Image

from pipelines.infotext import parse_infotext
from tests.ui.conftest import keep_screenshot
from tests.ui.test_generate_tab import set_number
from tests.ui.test_sd_vae import generate_one, pngs


def test_resize_seed_from_runs_and_comes_back_from_the_png(page, live_app):
    page.locator("#variation_panel").get_by_text("Variation seed").click()
    page.wait_for_selector("#seed_resize_from_w input[type=number]", state="visible")
    time.sleep(0.5)  # the accordion's opening (see test_generate_polish)
    set_number(page, "seed_resize_from_w", 64)
    set_number(page, "seed_resize_from_h", 64)
    keep_screenshot(page, "seed-resize-panel")
    set_number(page, "seed", 77)
    made = generate_one(page, live_app, "a red square, wider")  # 64x64 by generate_one: nothing to move ...
    with Image.open(made) as png:
        assert "Seed resize from" not in parse_infotext(png.text["parameters"])  # ... the picture's own size: off
    before = pngs(live_app)
    set_number(page, "width", 96)
    page.click("#generate")
    deadline = time.monotonic() + 120
    while not pngs(live_app) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    [newest] = pngs(live_app) - before
    with Image.open(newest) as png:
        params = parse_infotext(png.text["parameters"])
    assert (params["Size"], params["Seed resize from"]) == ("96x64", "64x64")

    set_number(page, "seed_resize_from_w", 0)
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#png_upload input[type=file]").set_input_files(str(newest))
    page.wait_for_function("(document.querySelector('#png_message')?.innerText || '').includes('Read')", timeout=30_000)
    page.click("#png_send")
    page.wait_for_function("(document.querySelector('#seed_resize_from_w input[type=number]')?.value || '') === '64'", timeout=30_000)
