"""Issue 17 item 10 in a real browser: the History tab lists past outputs newest first, pages, filters,
deletes to the trash and undoes, and sends an image to Generate and img2img. Each state leaves a
screenshot in test-artifacts/history_*.png."""
from __future__ import annotations

import os
import time
from pathlib import Path

from PIL import Image

from pipelines.history import TRASH_FOLDER
from pipelines.infotext import build_infotext
from pipelines.outputs import png_with_parameters
from tests.ui.conftest import keep_screenshot
from tests.ui.test_experiments_tab import choose
from tests.ui.test_generate_tab import set_number

PROMPT = "a lighthouse at dusk"
OLD_DAY = "2026-11-30"
SEEDED = 30  # with the generated image and a damaged file: 32 images, two pages of 24


def seed_outputs(outputs: Path) -> None:
    """30 older images (every third a castle, odd ones from "sd15-test") and one damaged file, all older than any run."""
    folder = outputs / OLD_DAY
    folder.mkdir(parents=True, exist_ok=True)
    long_ago = time.time() - 24 * 3600
    for number in range(SEEDED):
        prompt = f"castle {number}" if number % 3 == 0 else f"meadow {number}"
        text = build_infotext(prompt, "", {"Steps": 5, "Seed": number, "Size": "64x64", "Model": "sd15-test" if number % 2 else "other-model"})
        path = folder / f"{number:05d}-{number}.png"
        Image.new("RGB", (64, 64), (number * 8, 120, 160)).save(path, pnginfo=png_with_parameters(None, text))
        os.utime(path, (long_ago + number, long_ago + number))
    damaged = folder / "00099-99.png"
    damaged.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    os.utime(damaged, (long_ago - 60, long_ago - 60))  # the oldest: last on page 2


def captions(page) -> list[str]:
    return page.locator("#history_gallery .caption-label").all_inner_texts()


def wait_for_text(page, elem_id: str, text: str, timeout: float = 30000) -> None:
    page.wait_for_function(f"(document.querySelector('#{elem_id}')?.innerText || '').includes({text!r})", timeout=timeout)


def settle_and_shoot(page, name: str) -> None:
    """Screenshot once every thumbnail on screen has loaded (or failed, for the damaged file)."""
    page.wait_for_function("[...document.querySelectorAll('#history_gallery img')].every((img) => img.complete)", timeout=15000)
    keep_screenshot(page, name)


def open_history(page) -> None:
    page.get_by_role("tab", name="History").click()
    page.wait_for_selector("#history_position", state="visible")


def test_empty_state_says_where_images_will_appear(page, live_app):
    outputs = live_app["root"] / "outputs"
    assert not any(outputs.rglob("*.png"))
    open_history(page)
    wait_for_text(page, "history_empty", "No images yet")
    assert str(outputs) in page.inner_text("#history_empty")
    assert captions(page) == []
    assert page.locator("#history_older button, button#history_older").is_disabled()
    keep_screenshot(page, "history_empty")


def test_generate_then_page_filter_delete_undo_and_send(page, live_app):
    outputs = live_app["root"] / "outputs"
    seed_outputs(outputs)
    page.fill("#prompt textarea", PROMPT)
    set_number(page, "steps", 4)
    page.click("#generate")
    page.wait_for_selector("#breakdown table", timeout=120000)
    generated = [p for p in outputs.rglob("*.png") if OLD_DAY not in str(p)]
    assert len(generated) == 1

    # Page 1: the run just made comes first, then the seeded images newest first.
    open_history(page)
    wait_for_text(page, "history_position", "Page 1 of 2")
    assert "images 1–24 of 32" in page.inner_text("#history_position")
    shown = captions(page)
    assert len(shown) == 24 and shown[0] == PROMPT and shown[1:3] == ["meadow 29", "meadow 28"]
    assert page.locator("#history_newer").is_disabled()
    settle_and_shoot(page, "history_page1")

    # Page 2: the rest, the damaged file last, listed with a note rather than breaking the page.
    page.click("#history_older")
    wait_for_text(page, "history_position", "Page 2 of 2")
    shown = captions(page)
    assert len(shown) == 8 and shown[0] == "castle 6" and shown[-1] == "⚠ Damaged"
    assert page.locator("#history_older").is_disabled()
    page.locator("#history_gallery .thumbnail-item").last.click()
    wait_for_text(page, "history_details", "00099-99.png")
    assert "Damaged" in page.inner_text("#history_details")
    settle_and_shoot(page, "history_page2_damaged")

    # Filter: prompt words, then a model too; page 1 again.
    page.fill("#history_text input, #history_text textarea", "castle")
    wait_for_text(page, "history_position", "of 10 (32 in the folder)")
    assert captions(page)[:2] == ["castle 27", "castle 24"]
    choose(page, "history_model", "sd15-test")
    wait_for_text(page, "history_position", "of 5 (32 in the folder)")
    assert captions(page) == ["castle 27", "castle 21", "castle 15", "castle 9", "castle 3"]
    settle_and_shoot(page, "history_filtered")
    page.fill("#history_text input, #history_text textarea", "unicorn")
    wait_for_text(page, "history_empty", "No image matches")
    keep_screenshot(page, "history_no_match")
    page.fill("#history_text input, #history_text textarea", "")
    choose(page, "history_model", "All models")
    wait_for_text(page, "history_position", "Page 1 of 2 · images 1–24 of 32")

    # The generated image: its parameters, and the full-size file behind the link.
    page.locator("#history_gallery .thumbnail-item").first.click()
    page.wait_for_function("(document.querySelector('#history_raw textarea')?.value || '').includes('Steps: 4')", timeout=15000)
    assert PROMPT in page.inner_text("#history_table")
    link = page.locator("#history_details a", has_text="Open full size")
    response = page.request.get(link.evaluate("a => a.href"))
    assert response.status == 200 and response.body() == generated[0].read_bytes()
    settle_and_shoot(page, "history_selected")

    # Delete: to the trash, off the list; then Undo puts it back first in the list.
    page.click("#history_delete")
    wait_for_text(page, "history_message", "Moved")
    assert not generated[0].exists()
    trashed = outputs / TRASH_FOLDER / generated[0].relative_to(outputs)
    assert trashed.exists()
    page.wait_for_function(f"document.querySelector('#history_gallery .caption-label')?.innerText !== {PROMPT!r}")
    assert captions(page)[0] == "meadow 29" and "of 31" in page.inner_text("#history_position")
    settle_and_shoot(page, "history_deleted")
    page.click("#history_undo")
    wait_for_text(page, "history_message", "Restored")
    assert generated[0].exists() and not trashed.exists()
    page.wait_for_function(f"document.querySelector('#history_gallery .caption-label')?.innerText === {PROMPT!r}")
    settle_and_shoot(page, "history_undone")

    # A file deleted behind the app's back: a clear message, and the list refreshed without it.
    page.locator("#history_gallery .thumbnail-item").nth(1).click()
    wait_for_text(page, "history_details", "00029-29.png")
    (outputs / OLD_DAY / "00029-29.png").unlink()
    page.click("#history_delete")
    wait_for_text(page, "history_message", "already deleted")
    assert "meadow 29" not in captions(page)
    keep_screenshot(page, "history_already_deleted")

    # Send to Generate: the form takes the image's parameters and Generate is shown.
    page.get_by_role("tab", name="Generate").click()
    set_number(page, "steps", 9)  # changed, so the send must set it back
    open_history(page)
    page.locator("#history_gallery .thumbnail-item").first.click()
    page.wait_for_function("(document.querySelector('#history_raw textarea')?.value || '').includes('Steps: 4')", timeout=15000)
    page.click("#history_send")
    page.wait_for_selector("#prompt textarea", state="visible")
    page.wait_for_function(f"(document.querySelector('#prompt textarea')?.value || '') === {PROMPT!r}", timeout=15000)
    assert page.input_value("#steps input[type=number]") == "4"
    keep_screenshot(page, "history_sent_to_generate")

    # Send to img2img: the picture and its parameters land on the img2img tab.
    open_history(page)
    page.locator("#history_gallery .thumbnail-item").first.click()
    page.wait_for_function("(document.querySelector('#history_raw textarea')?.value || '').includes('Steps: 4')", timeout=15000)
    page.click("#history_send_img2img")
    wait_for_text(page, "i2i_message", "Sent to img2img", timeout=15000)
    page.wait_for_selector("#i2i_image img", timeout=15000)  # the picture itself, not only its parameters
    keep_screenshot(page, "history_sent_to_img2img")
