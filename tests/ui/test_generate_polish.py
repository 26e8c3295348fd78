"""Issue 17 items 8, 9 and 12 in Chromium: the live preview kept and scaled up, the queue in our own readout,
Esc stops, Ctrl+Up/Down weights prompt text, Gradio's footer Settings link gone, one-line status bar.
Each state leaves a screenshot in test-artifacts/."""
from __future__ import annotations

import time

import pytest
from PIL import Image

from pipelines.infotext import parse_infotext
from pipelines.telemetry import StepDone
from tests.ui.conftest import keep_screenshot, open_page
from tests.ui.test_generate_tab import generate_small, set_number
from tests.ui.test_img2img_tab import open_img2img, picture  # noqa: F401  (picture: a fixture)

READOUT = "document.querySelector('#readout').innerText"
# The status bar's text lines. Bold labels and plain text on one line have boxes of different heights (their
# bottoms differ by a pixel or two), so a box starts a new line only when it starts below the line so far.
STATUS_LINES = """() => { const el = document.querySelector('#status p') || document.querySelector('#status');
    const range = document.createRange(); range.selectNodeContents(el);
    const boxes = [...range.getClientRects()].filter((r) => r.width > 0).sort((a, b) => a.top - b.top);
    let lines = 0, bottom = -Infinity;
    for (const box of boxes) {
      if (box.top >= bottom - 1) { lines += 1; bottom = box.bottom; } else { bottom = Math.max(bottom, box.bottom); }
    }
    return lines; }"""


def shortcuts_ready(page) -> None:
    """Gradio runs the page's js after the app mounts: keys pressed before would meet no listener."""
    page.wait_for_function("window.likenessShortcuts === true", timeout=60000)


def prompt_value(page) -> str:
    return page.input_value("#prompt textarea")


def put_cursor(page, start: int, end: int | None = None) -> None:
    shortcuts_ready(page)
    page.locator("#prompt textarea").focus()
    page.evaluate("([s, e]) => document.querySelector('#prompt textarea').setSelectionRange(s, e)", [start, start if end is None else end])


def start_run(page, steps: int, prompt: str = "a red circle") -> None:
    page.fill("#prompt textarea", prompt)
    set_number(page, "width", 64)
    set_number(page, "height", 64)
    set_number(page, "steps", steps)
    page.click("#generate")


@pytest.fixture
def every_step_preview(live_app):
    config = live_app["manager"].config
    before, config.preview_every = config.preview_every, 1
    yield
    config.preview_every = before


STEP_PACE_S = 0.15


@pytest.fixture
def paced_steps(live_app):
    """Each denoising step takes at least STEP_PACE_S. The demo model at 64 px does a step in ~40 ms on an idle
    CPU: a whole run can end before the browser has drawn its preview, before a second tab has queued behind it,
    or before Esc reaches it, so these tests would pass or fail with the machine's load. The bus calls its
    subscribers in the generating thread, at each step, so a pause there paces the run as a slower device would."""
    unsubscribe = live_app["manager"].bus.subscribe(lambda event: time.sleep(STEP_PACE_S) if isinstance(event, StepDone) else None)
    yield
    unsubscribe()


def test_ctrl_up_down_weights_the_word_under_the_cursor_and_the_selection(page):
    page.fill("#prompt textarea", "a red circle on blue")
    put_cursor(page, 8)  # inside "circle", nothing selected
    page.keyboard.press("Control+ArrowUp")
    assert prompt_value(page) == "a red (circle:1.1) on blue"
    page.keyboard.press("Control+ArrowUp")
    assert prompt_value(page) == "a red (circle:1.2) on blue", "the existing weight is edited in place"
    keep_screenshot(page, "keys_weight_up")
    page.keyboard.press("Control+ArrowDown")
    page.keyboard.press("Control+ArrowDown")
    assert prompt_value(page) == "a red circle on blue", "at 1.0 the parentheses go"
    put_cursor(page, 2, 12)  # "red circle" selected
    page.keyboard.press("Control+ArrowDown")
    assert prompt_value(page) == "a (red circle:0.9) on blue"
    selected = page.evaluate("(() => { const a = document.querySelector('#prompt textarea'); return a.value.slice(a.selectionStart, a.selectionEnd); })()")
    assert selected == "red circle", "the weighted text stays selected for the next press"
    put_cursor(page, 15)  # inside the group's weight, "0.9": the group's own text is weighted, back to 1.0
    page.keyboard.press("Control+ArrowUp")
    assert prompt_value(page) == "a red circle on blue"
    # Negative prompt too; plain arrows still move the cursor.
    page.fill("#negative_prompt textarea", "blurry")
    page.locator("#negative_prompt textarea").press("Control+ArrowUp")
    assert page.input_value("#negative_prompt textarea") == "(blurry:1.1)"
    page.locator("#negative_prompt textarea").press("ArrowUp")
    assert page.input_value("#negative_prompt textarea") == "(blurry:1.1)"


def test_preview_stays_scaled_up_until_the_image_and_the_weighted_prompt_is_what_runs(page, live_app, every_step_preview, paced_steps):
    page.fill("#prompt textarea", "a red circle")
    put_cursor(page, 3)
    page.keyboard.press("Control+ArrowUp")  # typed by keys: Gradio must see it (the saved prompt says so)
    set_number(page, "width", 64)
    set_number(page, "height", 64)
    set_number(page, "steps", 20)  # paced: at least 3 s of previews
    page.click("#generate")
    page.wait_for_selector("#preview img", timeout=60000)
    shown = page.evaluate("""() => { const img = document.querySelector('#preview img'), box = document.querySelector('#preview');
        return {natural: img.naturalWidth, width: img.getBoundingClientRect().width, height: img.getBoundingClientRect().height,
                box: box.getBoundingClientRect().height, rendering: getComputedStyle(img).imageRendering}; }""")
    assert shown["rendering"] == "pixelated", shown
    assert shown["height"] >= 0.8 * shown["box"] and shown["width"] >= 2 * shown["natural"], f"the preview is not scaled up: {shown}"
    keep_screenshot(page, "preview_running_scaled_up")
    emptied = []
    deadline = time.time() + 60
    while time.time() < deadline and not page.locator("#gallery img").count():
        if not page.locator("#preview img").count() and not page.locator("#gallery img").count():
            emptied.append(page.inner_text("#readout"))
        time.sleep(0.05)
    assert page.locator("#gallery img").count(), "the run never finished"
    assert not emptied, f"the preview emptied before the image arrived: {emptied[:3]}"
    keep_screenshot(page, "preview_done")
    saved = sorted((live_app["root"] / "outputs").rglob("*.png"), key=lambda p: p.stat().st_mtime)[-1]
    assert parse_infotext(Image.open(saved).info["parameters"])["Prompt"] == "a (red:1.1) circle"


def test_a_second_tab_shows_its_queue_place_and_esc_stops_each_run(browser, live_app, paced_steps):
    first, second = open_page(browser, live_app["url"]), open_page(browser, live_app["url"])
    try:
        # Esc with nothing running leaves the readout alone (it only closes menus then).
        shortcuts_ready(first)
        first.keyboard.press("Escape")
        assert first.inner_text("#readout") == "Ready."
        start_run(first, 150)  # paced: 22 s at least, far longer than the second tab takes to queue; Esc ends it
        first.wait_for_function(f"{READOUT}.includes('step')", timeout=60000)
        start_run(second, 3, "a blue square")
        second.wait_for_function(f"{READOUT}.includes('waiting in the queue')", timeout=20000)
        second.wait_for_function(f"{READOUT}.includes('running now')", timeout=20000)
        text = second.inner_text("#readout")
        assert "yours is next" in text and "a job from a browser tab" in text and "step" in text, text
        # Our readout, not Gradio's guess: no tracker fades or overlays it, and the images show no Gradio ETA.
        assert second.locator("#readout [data-testid=status-tracker]:not(.hide)").count() == 0
        assert not second.locator("#gallery .progress-text").is_visible()
        keep_screenshot(second, "queue_second_tab_waiting")
        keep_screenshot(first, "queue_first_tab_running")

        second.keyboard.press("Escape")  # a queued run stops too, before it starts...
        second.wait_for_function(f"{READOUT}.includes('Stopped before it started')", timeout=20000)
        keep_screenshot(second, "esc_stopped_queued_second_tab")
        second.click("#generate")  # ...and queues again
        second.wait_for_function(f"{READOUT}.includes('waiting in the queue')", timeout=20000)
        first.keyboard.press("Escape")  # stops the first run...
        first.wait_for_function(f"{READOUT}.includes('Stopped')", timeout=30000)
        keep_screenshot(first, "esc_stopped_first_tab")
        second.wait_for_selector("#gallery img", timeout=60000)  # ...and the second one runs
        assert "waiting in the queue" not in second.inner_text("#readout")
        keep_screenshot(second, "queue_second_tab_done")
    finally:
        first.context.close()
        second.context.close()


def test_esc_stops_a_run_in_the_img2img_tab_too(page, picture, paced_steps):
    open_img2img(page)
    page.locator("#i2i_image input[type=file]").set_input_files(str(picture))
    page.wait_for_function("(document.querySelector('#i2i_message')?.innerText || '').includes('Size set')", timeout=30000)
    set_number(page, "i2i_steps", 150)  # 112 steps at strength 0.75, paced: 17 s at least; Esc ends it
    page.click("#i2i_generate")
    page.wait_for_function("(document.querySelector('#i2i_readout')?.innerText || '').includes('step')", timeout=60000)
    shortcuts_ready(page)
    page.keyboard.press("Escape")
    page.wait_for_function("(document.querySelector('#i2i_readout')?.innerText || '').includes('Stopped')", timeout=30000)
    assert not page.locator("#i2i_gallery img").count(), "the run ended with images: Esc did not stop it"
    keep_screenshot(page, "esc_stopped_img2img")


def test_no_gradio_settings_link_in_the_footer_and_one_line_status_bar(page, live_app):
    footer = page.locator("footer")
    assert footer.locator("text=Settings").count() == 0, "Gradio's footer Settings link is still there"
    assert footer.locator("text=Use via API").count() == 1, "the API link stays"
    assert page.get_by_role("tab", name="Settings").count() == 1
    start_run(page, 2)
    page.wait_for_selector("#gallery img", timeout=60000)
    page.wait_for_function("(document.querySelector('#status')?.innerText || '').includes('last run')", timeout=30000)
    lines = page.evaluate(STATUS_LINES)
    assert lines == 1, f"the status bar wraps to {lines} lines: {page.inner_text('#status')}"
    reuse = page.locator("#reuse_seed").bounding_box()
    random_seed = page.locator("#random_seed").bounding_box()
    assert reuse["height"] <= random_seed["height"] + 1, "Reuse last wraps"
    page.locator("footer").scroll_into_view_if_needed()
    keep_screenshot(page, "footer_and_status_bar")


GALLERY_FIT = """() => { const wrap = document.querySelector('#gallery .grid-wrap'), box = document.querySelector('#gallery').getBoundingClientRect();
    const images = [...document.querySelectorAll('#gallery .gallery-item img')].map((img) => img.getBoundingClientRect());
    return {scrolls: wrap.scrollHeight > wrap.clientHeight + 1, box_bottom: box.bottom,
            bottoms: images.map((r) => r.bottom), heights: images.map((r) => r.height)}; }"""


@pytest.mark.parametrize("batch", [1, 4])
def test_the_images_box_shows_every_image_whole(page, batch):
    """Gradio gives a single image the whole width: in the fixed-height box it had, its bottom was hidden
    behind a scrollbar. The box now grows with its images."""
    set_number(page, "batch_size", batch)
    start_run(page, steps=2)
    page.wait_for_function(f"document.querySelectorAll('#gallery .gallery-item img').length === {batch}", timeout=60000)
    page.wait_for_timeout(500)  # the images' layout settles after they load
    fit = page.evaluate(GALLERY_FIT)
    assert not fit["scrolls"], fit
    assert all(bottom <= fit["box_bottom"] + 1 for bottom in fit["bottoms"]) and min(fit["heights"]) > 100, fit
    keep_screenshot(page, f"gallery_whole_{batch}")


def test_a_style_saved_on_the_page_is_chosen_and_applied(page, live_app):
    """Save the prompts as a style, pick it in Styles, generate: the PNG's prompt has the style's words; the file is
    A1111's styles.csv in the models folder."""
    page.fill("#prompt textarea", "{prompt} on a white background")
    page.fill("#negative_prompt textarea", "blurry")
    page.get_by_text("Save a style, or write the chosen styles into the prompts").click()
    page.fill("#style_name textarea", "White background")
    page.click("#save_style")
    page.wait_for_function("(document.querySelector('#style_message')?.innerText || '').includes('saved')", timeout=10_000)
    assert (live_app["root"] / "models" / "styles.csv").read_text().splitlines()[1] == "White background,{prompt} on a white background,blurry"
    page.fill("#negative_prompt textarea", "")
    page.click("#styles input")
    page.locator("#styles").get_by_role("option", name="White background", exact=True).click()
    page.keyboard.press("Escape")
    generate_small(page, "a big red circle", steps=2, size=64, timeout_ms=60_000)
    keep_screenshot(page, "style_applied")
    saved = sorted((live_app["root"] / "outputs").rglob("*.png"), key=lambda p: p.stat().st_mtime)[-1]
    params = parse_infotext(Image.open(saved).info["parameters"])
    assert params["Prompt"] == "a big red circle on a white background" and params["Negative prompt"] == "blurry"
    assert page.input_value("#prompt textarea") == "a big red circle", "the style is applied to the run, not written into the box"
    # A1111's "apply the styles to the prompts": the words go into the boxes and the choice is cleared (not added twice).
    page.click("#apply_styles")
    page.wait_for_function("(document.querySelector('#prompt textarea')?.value || '') === 'a big red circle on a white background'", timeout=10_000)
    assert page.input_value("#negative_prompt textarea") == "blurry"
    assert page.locator("#styles").get_by_text("White background").count() == 0, "the written style is still chosen"
    assert "Wrote White background into the prompts." in page.inner_text("#style_message")
    page.click("#apply_styles")  # nothing chosen now: a message, the prompts untouched
    page.wait_for_function("(document.querySelector('#style_message')?.innerText || '').includes('Choose one or more styles first')",
                           timeout=10_000)
    assert page.input_value("#prompt textarea") == "a big red circle on a white background"
    keep_screenshot(page, "style_written_into_the_prompts")


def test_the_variation_seed_panel_reaches_the_image(page, live_app):
    page.get_by_text("Variation seed, resize seed from (A1111's Extra)").click()
    page.wait_for_selector("#subseed input", state="visible")
    time.sleep(0.5)  # the accordion's opening: a value typed while it renders its fields was lost (CI, once)
    page.fill("#subseed input", "77")
    page.press("#subseed input", "Tab")
    set_number(page, "subseed_strength", 0.35)
    assert page.input_value("#subseed input") == "77"
    generate_small(page, "a big red circle", steps=2, size=64, timeout_ms=60_000)
    keep_screenshot(page, "variation_seed")
    saved = sorted((live_app["root"] / "outputs").rglob("*.png"), key=lambda p: p.stat().st_mtime)[-1]
    params = parse_infotext(Image.open(saved).info["parameters"])
    assert params["Variation seed"] == "77" and params["Variation seed strength"] == "0.35"
