"""The img2img tab in a real browser: upload, paint a mask with the mouse, inpaint, img2img, Send to img2img, hires fix.

Each state is kept as a screenshot under test-artifacts/ (and LIKENESS_SHOTS, when set, for a person to look at).
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.ui.conftest import ARTIFACTS
from tests.ui.test_face_tab import face_app  # noqa: F401  (tiny SDXL + every face file)
from tests.ui.test_generate_tab import set_number

SIZE = 128  # the demo model's own size: the picture is generated at its size, so nothing is resized
STEP = re.compile(r"step (\d+)/(\d+)")


def shot(page, name: str) -> None:
    for folder in filter(None, (ARTIFACTS, os.environ.get("LIKENESS_SHOTS"))):
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"img2img-{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    """A smooth gradient, so a changed pixel is easy to tell from a kept one."""
    ramp = np.arange(SIZE, dtype=np.uint8) * 2
    pixels = np.stack([np.broadcast_to(ramp[None, :], (SIZE, SIZE)), np.broadcast_to(ramp[:, None], (SIZE, SIZE)),
                       np.full((SIZE, SIZE), 90, np.uint8)], axis=-1)
    path = tmp_path_factory.mktemp("pictures") / "gradient.png"
    Image.fromarray(pixels).save(path)
    return path


def open_img2img(page, sub_tab: str = "img2img") -> None:
    page.get_by_role("tab", name="img2img", exact=True).first.click()
    page.wait_for_selector("#i2i_generate", state="visible")
    if sub_tab == "inpaint":
        page.get_by_role("tab", name="Inpaint", exact=True).click()
        page.wait_for_selector("#i2i_editor", state="visible")


def wait_idle(page, elem_id: str, timeout: float = 30) -> None:
    """Past Gradio's "processing" overlay on a component (an upload handler still running)."""
    page.wait_for_function(f"!(document.querySelector('#{elem_id}')?.innerText || '').match(/queue|processing/i)", timeout=timeout * 1000)


def upload_to_editor(page, path: Path, tries: int = 3) -> None:
    """Drop `path` on the inpaint editor, once it is built.

    The editor builds its canvases (WebGL) a while after the Inpaint tab opens; a file given to its input before that
    is dropped without a trace (reproduced with the CPU loaded: no upload request at all). So the canvases are waited
    for first; the file is given again, the input cleared before, if the editor still shows nothing.
    """
    editor_input = page.locator("#i2i_editor input[type=file]")
    for attempt in range(tries):
        page.wait_for_selector("#i2i_editor canvas", state="attached", timeout=60_000)
        if attempt:
            editor_input.set_input_files([])
        editor_input.set_input_files(str(path))
        try:
            page.wait_for_function("(document.querySelector('#i2i_message')?.innerText || '').includes('Size set')",
                                   timeout=30_000)
            break
        except PlaywrightTimeout:
            if attempt == tries - 1:  # say so here, not later as an unrelated "add a picture first"
                raise AssertionError(f"the inpaint editor dropped the picture {tries} times (a loaded machine)") from None
    wait_idle(page, "i2i_editor")


def pixels_at(page, x: float, y: float) -> np.ndarray:
    """What the screen shows in a 4x4 square at (x, y): the editor's WebGL canvas cannot be read back directly."""
    import io

    png = page.screenshot(clip={"x": x - 2, "y": y - 2, "width": 4, "height": 4})
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def paint_stroke(page) -> None:
    """A short horizontal brush stroke across the middle of the picture, drawn with the mouse.

    The editor builds its canvas after the upload settles; a stroke drawn before that selects page
    text instead, so the stroke is drawn again until the screen shows it.
    """
    for _attempt in range(5):
        page.locator("#i2i_editor button[aria-label=Brush]").click()
        canvas = page.locator("#i2i_editor canvas").first
        canvas.scroll_into_view_if_needed()  # the screen is read at the canvas' middle: it must be on screen
        box = canvas.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + 2, box["y"] + 2)  # the brush's outline follows the mouse: keep it off the spot
        before = pixels_at(page, x, y)
        page.mouse.move(x - 30, y)
        page.mouse.down()
        for i in range(13):
            page.mouse.move(x - 30 + 5 * i, y, steps=2)
        page.mouse.up()
        page.mouse.move(box["x"] + 2, box["y"] + 2)
        time.sleep(0.5)  # the editor sends its layers after the stroke
        if np.abs(pixels_at(page, x, y) - before).mean() > 20:
            return
        time.sleep(1)
    raise AssertionError("the editor never took the brush stroke")


def run_and_wait(page, prefix: str = "i2i_", timeout: float = 120, running_shot: str | None = None) -> str:
    page.click(f"#{prefix}generate")
    deadline, shot_taken = time.time() + timeout, running_shot is None
    while time.time() < deadline:
        readout = page.inner_text(f"#{prefix}readout")
        if not shot_taken and STEP.search(readout):
            shot(page, running_shot)
            shot_taken = True
        if readout.startswith("⚠"):
            return readout
        # The final update sets the breakdown and the readout together; on a loaded machine the page can show the table
        # a moment before the readout's "done" (seen in a loaded run): both are waited for.
        if page.locator(f"#{prefix}breakdown table").count() and readout.lstrip().startswith("done"):
            return readout
        time.sleep(0.2)
    raise AssertionError(f"the run never finished: {page.inner_text(f'#{prefix}readout')!r}")


def newest_output(root: Path, after: float) -> Image.Image:
    files = [p for p in (root / "outputs").rglob("*.png") if p.stat().st_mtime >= after and "experiments" not in p.parts]
    assert files, "no image was saved"
    return Image.open(max(files, key=lambda p: p.stat().st_mtime)).convert("RGB")


def test_fresh_tab_then_inpaint_a_painted_stroke_keeps_the_rest(page, live_app, picture):
    open_img2img(page)
    shot(page, "1-fresh")
    open_img2img(page, "inpaint")
    page.wait_for_selector("#i2i_inpaint_options", state="visible", timeout=10000)
    upload_to_editor(page, picture)
    assert page.input_value("#i2i_width input[type=number]") == str(SIZE)
    paint_stroke(page)
    shot(page, "2-painted-mask")
    page.fill("#i2i_prompt textarea", "a red circle")
    set_number(page, "i2i_steps", 20)
    set_number(page, "i2i_denoising_strength", 1)
    set_number(page, "i2i_seed", 7)
    started = time.time()
    readout = run_and_wait(page, running_shot="3-running")
    assert not readout.startswith("⚠"), readout
    shot(page, "4-done")
    assert page.locator("#i2i_gallery img").count() >= 1
    assert "Denoising strength" in page.input_value("#i2i_infotext textarea") or "a red circle" in page.input_value("#i2i_infotext textarea")
    result = np.asarray(newest_output(live_app["root"], started), dtype=np.int16)
    original = np.asarray(Image.open(picture).convert("RGB"), dtype=np.int16)
    assert result.shape == original.shape
    # The stroke crosses the middle: the corners are far outside it (and its 4 px blur) and are the original, bit for bit.
    for rows, cols in ((slice(0, 24), slice(0, 24)), (slice(0, 24), slice(-24, None)), (slice(-24, None), slice(0, 24)),
                       (slice(-24, None), slice(-24, None))):
        assert np.abs(result[rows, cols] - original[rows, cols]).max() <= 1, "a pixel outside the mask changed"
    middle = np.abs(result[54:74, 54:74] - original[54:74, 54:74]).mean()
    assert middle > 8, f"the painted area did not change (mean difference {middle:.1f})"


def test_inpaint_with_a_mask_file_keeps_the_rest(page, live_app, picture, tmp_path):
    """A1111's Inpaint upload: a black-and-white mask from a file (white = repaint) instead of painting."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[40:88, 40:88] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    open_img2img(page, "inpaint")
    upload_to_editor(page, picture)
    page.locator("#i2i_mask_file input[type=file]").set_input_files(str(tmp_path / "mask.png"))
    page.wait_for_selector("#i2i_mask_file img", timeout=30_000)
    page.fill("#i2i_prompt textarea", "a red circle")
    set_number(page, "i2i_steps", 8)
    set_number(page, "i2i_denoising_strength", 1)
    set_number(page, "i2i_seed", 7)
    started = time.time()
    readout = run_and_wait(page)
    shot(page, "mask-file-done")
    assert "⚠" not in readout, readout  # nothing painted: no note that the painting was not used
    result = np.asarray(newest_output(live_app["root"], started), dtype=np.int16)
    original = np.asarray(Image.open(picture).convert("RGB"), dtype=np.int16)
    for rows, cols in ((slice(0, 24), slice(0, 24)), (slice(-24, None), slice(-24, None)), (slice(0, 24), slice(-24, None))):
        assert np.abs(result[rows, cols] - original[rows, cols]).max() <= 1, "a pixel outside the mask changed"
    assert np.abs(result[54:74, 54:74] - original[54:74, 54:74]).mean() > 8, "the masked square did not change"


def test_a_mask_file_that_is_not_a_picture_is_a_message(page, picture, tmp_path):
    fake = tmp_path / "mask.png"
    fake.write_text("not a picture")
    open_img2img(page, "inpaint")
    upload_to_editor(page, picture)
    page.locator("#i2i_mask_file input[type=file]").set_input_files(str(fake))
    time.sleep(2)  # the upload reaches the server
    set_number(page, "i2i_steps", 2)
    readout = run_and_wait(page)
    assert readout.startswith("⚠ The mask file") and "not an image" in readout, readout
    assert "Traceback" not in page.content()


def test_empty_mask_is_a_message(page, picture):
    open_img2img(page, "inpaint")
    upload_to_editor(page, picture)
    set_number(page, "i2i_steps", 2)
    readout = run_and_wait(page)
    shot(page, "5-error-empty-mask")
    assert readout.startswith("⚠") and "mask is empty" in readout, readout
    assert "Traceback" not in page.content()


def test_img2img_at_half_strength(page, live_app, picture):
    open_img2img(page)
    page.locator("#i2i_image input[type=file]").set_input_files(str(picture))
    page.wait_for_function("(document.querySelector('#i2i_message')?.innerText || '').includes('Size set')", timeout=30000)
    page.fill("#i2i_prompt textarea", "a blue square")
    set_number(page, "i2i_steps", 10)
    set_number(page, "i2i_denoising_strength", 0.5)
    started = time.time()
    readout = run_and_wait(page)
    assert not readout.startswith("⚠"), readout
    assert "5/5" in readout, f"strength 0.5 of 10 steps runs 5: {readout!r}"
    breakdown = page.inner_text("#i2i_breakdown")
    assert "img encode" in breakdown and "denoise" in breakdown
    result = newest_output(live_app["root"], started)
    assert result.size == (SIZE, SIZE)
    shot(page, "6-img2img-done")


def test_bad_input_gives_messages(page, live_app, tmp_path, picture):
    open_img2img(page)
    settings = live_app["settings"]
    kept, settings.max_input_megapixels = settings.max_input_megapixels, 0.01  # Settings' limit applies at once: 10,000 pixels
    try:
        page.locator("#i2i_image input[type=file]").set_input_files(str(picture))
        page.wait_for_function("(document.querySelector('#i2i_message')?.innerText || '').includes('⚠')", timeout=30000)
        assert "128x128 pixels (16,384 pixels); Likeness opens images of at most 10,000 pixels" in page.inner_text("#i2i_message")
        shot(page, "7a-error-too-large")
    finally:
        settings.max_input_megapixels = kept
    fake = tmp_path / "not-a-picture.png"
    fake.write_text("this is text, not a PNG")
    page.locator("#i2i_image input[type=file]").set_input_files(str(fake))
    page.wait_for_function("(document.querySelector('#i2i_message')?.innerText || '').includes('not an image')", timeout=30000)
    assert page.inner_text("#i2i_message").startswith("⚠ The uploaded file is not an image Likeness can read")
    shot(page, "7-error-not-an-image")
    page.locator("#i2i_image input[type=file]").set_input_files(str(picture))
    page.wait_for_function("(document.querySelector('#i2i_message')?.innerText || '').includes('Size set')", timeout=30000)
    set_number(page, "i2i_steps", 2)
    set_number(page, "i2i_denoising_strength", 1.5)
    readout = run_and_wait(page)
    value = page.input_value("#i2i_denoising_strength input[type=number]")
    # Either the browser kept 1.5 and the engine names the field, or the slider clamped it to its maximum and it ran.
    assert ("Denoising strength must be between 0 and 1" in readout) or (float(value) <= 1 and not readout.startswith("⚠")), (readout, value)
    shot(page, "8-strength-out-of-range")


def test_send_to_img2img_from_generate(page):
    page.fill("#prompt textarea", "a green star")
    set_number(page, "steps", 2)
    run_and_wait(page, prefix="")
    page.click("#send_img2img")
    page.wait_for_function("(document.querySelector('#i2i_message')?.innerText || '').includes('Sent to img2img')", timeout=30000)
    assert page.locator("#i2i_generate").is_visible()
    assert page.input_value("#i2i_prompt textarea") == "a green star"
    assert page.locator("#i2i_image img").count() == 1
    shot(page, "9-sent-to-img2img")
    page.get_by_role("tab", name="Generate", exact=True).first.click()
    page.click("#send_inpaint")
    page.wait_for_function("(document.querySelector('#i2i_message')?.innerText || '').includes('Sent to Inpaint')", timeout=30000)
    page.wait_for_selector("#i2i_editor", state="visible", timeout=10000)
    page.wait_for_selector("#i2i_inpaint_options", state="visible", timeout=10000)


def test_hires_fix_doubles_the_size(page, live_app):
    page.fill("#prompt textarea", "a lighthouse")
    set_number(page, "steps", 2)
    set_number(page, "width", 64)
    set_number(page, "height", 64)
    page.locator("#hires_panel").get_by_text("Hires. fix").click()
    page.wait_for_selector("#hires_scale input[type=number]", state="visible")
    time.sleep(0.5)  # the accordion's opening
    for elem_id in ("hires_scale", "hires_steps"):
        set_number(page, elem_id, 2)
        assert float(page.input_value(f"#{elem_id} input[type=number]")) == 2
    shot(page, "10-hires-panel")
    started = time.time()
    readout = run_and_wait(page, prefix="")
    assert not readout.startswith("⚠"), readout
    assert newest_output(live_app["root"], started).size == (128, 128)
    assert "hires" in page.inner_text("#breakdown")


def test_png_info_sends_the_picture_to_inpaint(page, live_app, picture):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a blue heart\nSteps: 3, Sampler: Euler, CFG scale: 6, Seed: 42, Size: 128x128")
    path = live_app["root"] / "with-parameters.png"
    Image.open(picture).save(path, pnginfo=info)
    page.get_by_role("tab", name="PNG Info", exact=True).click()
    page.locator("#png_upload input[type=file]").set_input_files(str(path))
    page.wait_for_function("(document.querySelector('#png_message')?.innerText || '').includes('Read')", timeout=30000)
    page.click("#png_send_inpaint")
    page.wait_for_function("(document.querySelector('#i2i_message')?.innerText || '').includes('Sent to Inpaint')", timeout=30000)
    page.wait_for_selector("#i2i_editor canvas", state="visible", timeout=10000)
    assert page.input_value("#i2i_prompt textarea") == "a blue heart"
    assert page.input_value("#i2i_seed input") == "42"
    page.locator("#i2i_detailer_panel").get_by_text("Face detailer").click()
    wait_idle(page, "i2i_editor")
    time.sleep(1)
    assert "Sent to Inpaint" in page.inner_text("#i2i_message"), "the editor's own upload event replaced Send's message"
    shot(page, "11-sent-from-png-info-to-inpaint")


def test_api_img2img_bad_values_are_messages(live_app, picture, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(live_app["url"], verbose=False)
    readout = client.predict(image=handle_file(str(picture)), denoising_strength=1.5, steps=2, api_name="/img2img")[0]
    assert readout.startswith("⚠") and "Denoising strength must be between 0 and 1, got 1.5" in readout, readout
    fake = tmp_path / "fake.png"
    fake.write_text("text")
    readout = client.predict(image=handle_file(str(fake)), steps=2, api_name="/img2img")[0]
    assert readout.startswith("⚠") and "not an image" in readout, readout
    readout = client.predict(steps=2, api_name="/img2img")[0]
    assert readout.startswith("⚠ Add a picture"), readout
    readout, _preview, gallery, breakdown, infotext = client.predict(image=handle_file(str(picture)), denoising_strength=0.5, steps=4,
                                                                   seed=3, prompt="by the api", api_name="/img2img")
    assert gallery and "img encode" in breakdown and "by the api" in infotext, readout


def test_face_detailer_shows_before_and_after(browser, face_app):  # noqa: F811
    """On the tiny SDXL model with the tiny face files (a detector that finds one planted face in any picture)."""
    from tests.ui.conftest import open_page
    from tests.ui.test_experiments_tab import choose

    page = open_page(browser, face_app["url"])
    try:
        choose(page, "model", "tiny-sdxl")
        page.fill("#prompt textarea", "a portrait")
        for elem_id, value in (("steps", 2), ("width", 256), ("height", 256)):
            set_number(page, elem_id, value)
        page.locator("#detailer_panel").get_by_text("Face detailer", exact=True).click()
        page.locator("#face_detail input[type=checkbox]").check()
        set_number(page, "face_detail_steps", 2)
        set_number(page, "face_detail_strength", 0.6)
        readout = run_and_wait(page, prefix="", timeout=240)
        assert not readout.startswith("⚠"), readout
        assert "face detail" in page.inner_text("#breakdown")
        page.wait_for_selector("#before_after", state="visible", timeout=30000)
        page.wait_for_function("document.querySelectorAll('#before_after_slider img').length >= 2", timeout=30000)
        shot(page, "12-face-detailer-before-after")
    finally:
        page.context.close()


def test_hires_upscalers_listed_when_the_panel_opens_with_why_a_file_is_unusable(page, live_app):
    folder = live_app["root"] / "models" / "ESRGAN"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "damaged_x4.safetensors").write_bytes(b"not a safetensors file")  # dropped in after the page was built
    try:
        open_img2img(page)
        page.locator("#i2i_hires_panel").get_by_text("Hires. fix").click()
        page.wait_for_selector("#i2i_hires_upscaler input", state="visible")
        time.sleep(1)  # the panel's expand event refreshes the list
        page.click("#i2i_hires_upscaler input")
        options = [o.replace("✓", "").strip() for o in page.locator("#i2i_hires_upscaler").get_by_role("option").all_inner_texts()]
        assert options[:3] == ["Latent", "Lanczos", "Nearest"], options
        assert any(o.startswith("damaged_x4 — cannot be used: ") for o in options), options
        shot(page, "13-hires-upscalers")
    finally:
        (folder / "damaged_x4.safetensors").unlink()
