"""The Extras tab in a real browser: Send to Extras from Generate, Scale by / Scale to, the tile readout and Stop,
bad pictures as messages (the app keeps serving)."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from pipelines.extras import EXTRAS_FOLDER
from tests.ui.conftest import click_for_outcome, keep_screenshot, settled_text
from tests.ui.test_generate_tab import generate_small
from tests.upscale import tiny_state, write_esrgan
from tests.upscale.test_upscalers import noise_image

@pytest.fixture(scope="module")
def esrgan_file(live_app):
    return write_esrgan(Path(live_app["root"]) / "models" / "ESRGAN" / "tiny_x4.safetensors", tiny_state(4, seed=1))


def extras_files(live_app) -> set[Path]:
    return set((Path(live_app["root"]) / "outputs" / EXTRAS_FOLDER).rglob("*.png"))


def show_extras(page) -> None:
    page.get_by_role("tab", name="Extras").click()
    page.wait_for_selector("#extras_run", state="visible")


def upscale_and_wait(page) -> str:
    return click_for_outcome(page, "#extras_run", "#extras_readout", "Done|⚠|Stopped", 120_000)


def pick(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id}").get_by_role("option", name=value, exact=True).click()


def test_send_to_extras_then_upscale_keeps_the_pictures_parameters(page, live_app, esrgan_file):
    generate_small(page, "a red circle for extras", steps=2, size=64, timeout_ms=60_000)
    page.click("#send_extras")
    page.wait_for_function("(document.querySelector('#extras_message')?.innerText || '').includes('sent from Generate')", timeout=30_000)
    assert page.locator("#extras_run").is_visible()  # Send switched to the Extras tab
    page.locator("#extras_upscaler input").click()  # the ESRGAN file written after the page opened is listed
    assert [text.split("\n")[-1] for text in page.get_by_role("option").all_inner_texts()] == ["None", "Lanczos", "Nearest", "tiny_x4"]
    page.get_by_role("option", name="Lanczos", exact=True).click()
    before = extras_files(live_app)
    assert "Done" in upscale_and_wait(page)
    [saved] = extras_files(live_app) - before
    with Image.open(saved) as png:
        assert png.text["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
        assert png.text["parameters"].startswith("a red circle for extras\n")
        width, height = png.size
    info = page.inner_text("#extras_info")
    assert f"→ {width}x{height} in " in info and str(saved) in info and "Postprocess upscaler: Lanczos" in info
    page.wait_for_function("document.querySelector('#extras_output img')?.src.includes('00')", timeout=30_000)


def test_an_uploaded_picture_scaled_to_a_size_with_a_second_upscaler(page, live_app, esrgan_file, tmp_path):
    show_extras(page)
    picture = tmp_path / "wide.png"
    noise_image(40, 20, seed=3).save(picture)
    page.locator("#extras_image input[type=file]").set_input_files(str(picture))
    page.wait_for_selector("#extras_image img", timeout=30_000)
    page.get_by_label("Scale to").check()
    page.fill("#extras_width input", "60")
    page.fill("#extras_height input", "60")
    pick(page, "extras_upscaler", "Lanczos")
    pick(page, "extras_upscaler_2", "tiny_x4")
    page.fill("#extras_upscaler_2_visibility input[type=number]", "0.5")
    page.press("#extras_upscaler_2_visibility input[type=number]", "Tab")
    before = extras_files(live_app)
    assert "Done" in upscale_and_wait(page)
    [saved] = extras_files(live_app) - before
    with Image.open(saved) as png:
        assert png.size == (60, 60) and "parameters" not in png.text  # a plain upload has none to keep
        assert png.text["postprocessing"] == ("Postprocess upscale to: 60x60, Postprocess crop to fit: True, Postprocess upscaler: "
                                              "Lanczos, Postprocess upscaler 2: tiny_x4, Postprocess upscaler 2 visibility: 0.5")


def huge_header_png(path: Path) -> Path:
    """A tiny file whose header claims 40000 x 40000 pixels: refused from the header, nothing decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b""))
    return path


def test_no_picture_or_a_huge_one_is_a_message_and_the_tab_still_works(page, live_app, tmp_path):
    show_extras(page)
    assert upscale_and_wait(page) == "⚠ Choose a picture to upscale (drop it on Picture)."
    page.locator("#extras_image input[type=file]").set_input_files(str(huge_header_png(tmp_path / "huge.png")))
    page.wait_for_timeout(1000)
    before = extras_files(live_app)
    readout = upscale_and_wait(page)
    assert readout.startswith("⚠ The picture is too large to open safely") and "(Settings: Largest input image)" in readout, readout
    assert extras_files(live_app) == before
    small = tmp_path / "small.png"
    Image.new("RGB", (16, 16), "blue").save(small)
    page.locator("#extras_image input[type=file]").set_input_files(str(small))
    page.wait_for_selector("#extras_image img", timeout=30_000)
    assert "Done" in upscale_and_wait(page)


def test_stop_ends_a_long_upscale_between_tiles_and_saves_nothing(page, live_app, esrgan_file, tmp_path):
    show_extras(page)
    big = tmp_path / "big.png"
    noise_image(1536, 1536, seed=4).save(big)  # 64 tiles of the tiny net: ~15 s on 2 cores
    page.locator("#extras_image input[type=file]").set_input_files(str(big))
    page.wait_for_selector("#extras_image img", timeout=30_000)
    pick(page, "extras_upscaler", "tiny_x4")
    before = extras_files(live_app)
    page.click("#extras_run")
    page.wait_for_function("/tile [2-9]/.test(document.querySelector('#extras_readout')?.innerText || '')", timeout=60_000)
    page.click("#extras_stop")
    page.wait_for_function("(document.querySelector('#extras_readout')?.innerText || '').includes('Stopped')", timeout=60_000)
    assert "nothing was saved" in page.inner_text("#extras_readout")
    assert extras_files(live_app) == before
    assert live_app["manager"].jobs() == []


def test_the_gradio_endpoint_takes_the_requests_field_names(live_app, esrgan_file, tmp_path):
    from gradio_client import Client, handle_file

    from tests.ui.test_named_api import parameter_names

    client = Client(live_app["url"], verbose=False)
    assert parameter_names(client, "/upscale") == ["image", "resize_mode", "scale", "width", "height", "crop", "upscaler",
                                                   "upscaler_2", "upscaler_2_visibility", "pictures"]
    picture = tmp_path / "called.png"
    noise_image(20, 10, seed=5).save(picture)
    readout, output, info, _gallery = client.predict(image=handle_file(str(picture)), resize_mode="Scale by", scale=3, width=512, height=512,
                                           crop=True, upscaler="Nearest", upscaler_2="None", upscaler_2_visibility=0, api_name="/upscale")
    assert readout.startswith("**Done in") and "Postprocess upscale by: 3, Postprocess upscaler: Nearest" in info
    with Image.open(output) as png:
        expected = noise_image(20, 10, seed=5).resize((60, 30), Image.Resampling.NEAREST)
        assert png.size == (60, 30) and np.array_equal(np.asarray(png.convert("RGB")), np.asarray(expected))
    readout, _output, _info, gallery = client.predict(pictures=[handle_file(str(picture)), handle_file(str(picture))], resize_mode="Scale by",
                                                      scale=2, upscaler="Nearest", api_name="/upscale")  # a batch: pictures, no image
    assert readout.startswith("**Done: 2 of 2 pictures.**") and len(gallery) == 2


def test_png_info_and_history_send_to_extras(page, live_app, tmp_path):
    page.get_by_role("tab", name="PNG Info").click()
    page.click("#png_send_extras")
    page.wait_for_function("(document.querySelector('#extras_message')?.innerText || '').includes('Nothing to send')", timeout=30_000)
    assert page.inner_text("#extras_message") == "⚠ Nothing to send: drop an image first."
    page.get_by_role("tab", name="PNG Info").click()
    dropped = tmp_path / "dropped.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a dropped picture\nSteps: 5, Seed: 3")
    noise_image(12, 12, seed=6).save(dropped, pnginfo=info)
    page.locator("#png_upload input[type=file]").set_input_files(str(dropped))
    page.wait_for_function("(document.querySelector('#png_message')?.innerText || '').includes('Read')", timeout=30_000)
    page.click("#png_send_extras")
    page.wait_for_function("(document.querySelector('#extras_message')?.innerText || '').includes('sent from PNG Info')", timeout=30_000)
    pick(page, "extras_upscaler", "Nearest")
    before = extras_files(live_app)
    assert "Done" in upscale_and_wait(page)
    [saved] = extras_files(live_app) - before
    with Image.open(saved) as png:
        assert png.size == (24, 24) and png.text["parameters"] == "a dropped picture\nSteps: 5, Seed: 3"

    page.get_by_role("tab", name="History").click()
    page.click("#history_send_extras")
    page.wait_for_function("(document.querySelector('#extras_message')?.innerText || '').includes('Click an image first')", timeout=30_000)
    page.get_by_role("tab", name="History").click()
    page.click("#history_refresh")
    page.wait_for_selector("#history_gallery .thumbnail-item", timeout=30_000)
    page.locator("#history_gallery .thumbnail-item").first.click()
    page.wait_for_function("(document.querySelector('#history_raw textarea')?.value || '') !== ''", timeout=30_000)
    page.click("#history_send_extras")
    page.wait_for_function("(document.querySelector('#extras_message')?.innerText || '').includes('sent from History')", timeout=30_000)
    assert page.locator("#extras_image img").count() == 1


def test_the_swap_button_swaps_width_and_height(page):
    page.fill("#width input[type=number]", "192")
    page.press("#width input[type=number]", "Tab")
    page.fill("#height input[type=number]", "96")
    page.press("#height input[type=number]", "Tab")
    page.click("#swap_size")
    page.wait_for_function("(document.querySelector('#width input[type=number]')?.value || '') === '96'", timeout=10_000)
    assert page.input_value("#height input[type=number]") == "192"


def test_batch_process_upscales_each_picture_and_skips_an_unreadable_one(page, live_app, tmp_path):
    """A1111's Batch Process: every picture with the settings, each saved as a single upscale is (with its own
    parameters), the gallery filling; an unreadable file is skipped and named."""
    show_extras(page)
    page.get_by_role("tab", name="Batch Process", exact=True).click()
    page.wait_for_selector("#extras_pictures", state="visible")
    files = []
    for index, size in enumerate(((12, 8), (10, 10))):
        path = tmp_path / f"shot_{index}.png"
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", f"picture {index}\nSteps: 5, Seed: {index}")
        noise_image(*size, seed=index).save(path, pnginfo=info)
        files.append(path)
    broken = tmp_path / "broken.png"
    broken.write_text("not a picture")
    page.locator("#extras_pictures input[type=file]").set_input_files([str(p) for p in (*files, broken)])
    for path in (*files, broken):
        page.wait_for_function(f"(document.querySelector('#extras_pictures')?.innerText || '').includes({path.stem!r})", timeout=30_000)
    pick(page, "extras_upscaler", "Nearest")
    before = extras_files(live_app)
    readout = upscale_and_wait(page)
    assert readout.startswith("Done: 2 of 3 pictures."), readout
    assert "Skipped: The picture broken.png is not an image" in readout
    made = sorted(extras_files(live_app) - before)
    assert len(made) == 2
    texts = {Image.open(path).text["parameters"] for path in made}
    assert texts == {"picture 0\nSteps: 5, Seed: 0", "picture 1\nSteps: 5, Seed: 1"}  # each keeps its own parameters
    assert sorted(Image.open(path).size for path in made) == [(20, 20), (24, 16)]
    page.wait_for_selector("#extras_gallery img", timeout=30_000)
    assert page.locator("#extras_gallery img").count() >= 2 and not page.locator("#extras_output").is_visible()
    keep_screenshot(page, "extras-batch")
    page.get_by_role("tab", name="Batch Process", exact=True).click()
    page.locator("#extras_pictures button[aria-label='Clear']").first.click()
    readout = upscale_and_wait(page)
    assert readout.startswith("⚠ Add the pictures to upscale first"), readout
    page.get_by_role("tab", name="Single Image", exact=True).click()
    page.wait_for_selector("#extras_output", state="visible")


def test_stop_ends_a_batch_keeping_the_pictures_done(page, live_app, esrgan_file, tmp_path):
    show_extras(page)
    page.get_by_role("tab", name="Batch Process", exact=True).click()
    small, big = tmp_path / "a_small.png", tmp_path / "b_big.png"
    noise_image(16, 16, seed=1).save(small)
    noise_image(1536, 1536, seed=4).save(big)  # 64 tiles of the tiny net: long enough to stop
    page.locator("#extras_pictures input[type=file]").set_input_files([str(small), str(big), str(small)])
    page.wait_for_function("(document.querySelector('#extras_pictures')?.innerText || '').includes('b_big')", timeout=30_000)
    pick(page, "extras_upscaler", "tiny_x4")
    before = extras_files(live_app)
    page.click("#extras_run")
    page.wait_for_function("/Picture 2 of 3: b_big[\\s\\S]*tile [2-9]/.test(document.querySelector('#extras_readout')?.innerText || '')",
                           timeout=60_000)
    page.click("#extras_stop")
    page.wait_for_function("(document.querySelector('#extras_readout')?.innerText || '').startsWith('Stopped after')", timeout=60_000)
    assert settled_text(page, "#extras_readout").startswith("Stopped after 1 of 3 pictures.")
    assert len(extras_files(live_app) - before) == 1  # the first, done before Stop; the big one not written, the third not run
    assert live_app["manager"].jobs() == []
