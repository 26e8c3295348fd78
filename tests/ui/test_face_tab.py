"""The Face tab in Chromium: installed files, the per-photo debug view with the parsing mask, and a
face generation through the named API, on a tiny SDXL model with every face file present."""
from __future__ import annotations

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from pipelines.bench.tiny_face import HANKS, TINY_IDFORMER, write_face_models
from pipelines.infotext import parse_infotext
from tests.tiny_models import copy_model
from tests.ui.conftest import keep_screenshot, open_page, start_app


@pytest.fixture(scope="module")
def face_app(tmp_path_factory, model_zoo, tiny_pipes):
    root = tmp_path_factory.mktemp("face-app")
    copy_model(model_zoo["sdxl"], root / "models", "tiny-sdxl")
    write_face_models(root / "models", sdxl_unet=tiny_pipes["sdxl"].unet)
    info, demo = start_app(root)
    info["manager"].face.idformer_config = TINY_IDFORMER  # the tiny PuLID file's sizes
    yield info
    demo.close()


def test_face_tab_lists_files_and_shows_the_parsing_view(browser, face_app):
    page = open_page(browser, face_app["url"])
    try:
        page.get_by_role("tab", name="Face").click()
        files = page.locator("#face_files")
        for name in ("scrfd_10g_bnkps.onnx", "EVA02_CLIP_L_336_psz14_s6B.pt", "parsing_bisenet.pth", "pulid_v1.1.safetensors"):
            assert name in files.inner_text()
        missing = [line for line in files.inner_text().splitlines() if "missing" in line]
        assert len(missing) == 1 and "pulid_flux_v0.9.1" in missing[0] and "models/pulid" in missing[0]  # only FLUX's file is absent
        page.locator("#face_photos input[type=file]").set_input_files(str(HANKS))
        page.wait_for_function("(document.querySelector('#face_detect_info')?.innerText || '').includes('Detected')", timeout=60_000)
        assert "CPUExecutionProvider" in page.locator("#face_detect_info").inner_text()
        page.wait_for_function("document.querySelectorAll('#face_debug img').length >= 3", timeout=30_000)
        captions = page.locator("#face_debug").inner_text()
        assert "aligned 512x512" in captions and "to EVA-CLIP" in captions
        keep_screenshot(page, "face_tab_debug_view")
        # The Experiments tab starts from the Face tab's photo.
        page.get_by_role("tab", name="Experiments").click()
        page.get_by_text("Face reference (PuLID axes, ArcFace similarity)").click()
        page.wait_for_function("(document.querySelector('#exp_face_photos')?.innerText || '').includes('Tom_Hanks')", timeout=30_000)
    finally:
        page.context.close()


def test_generate_face_api_returns_an_image_with_pulid_metadata(face_app):
    client = Client(face_app["url"], verbose=False)
    form = dict(model="tiny-sdxl", prompt="a portrait", negative_prompt="", steps=2, cfg_scale=3.0, seed=5, width=256, height=256,
                sampler="Euler", batch_size=1, batch_count=1, vae_dtype="auto", deepcache_interval=1, deepcache_branch=0,
                deepcache_schedule="uniform", flux_cache="off", flux_cache_threshold=0.08, approximate_cache=False)
    readout, gallery, breakdown = client.predict([handle_file(str(HANKS))], "", 0.8, 0, 20, "v2", 1, 1, *form.values(),
                                                 api_name="/generate_face")
    assert gallery, readout
    assert "face embed" in breakdown
    from PIL import Image

    params = parse_infotext(Image.open(gallery[0]["image"]).info["parameters"])
    assert params["PuLID weight"] == "0.8" and "Face hash" in params
    # A photo without the needed face model for this family: a message, and the app keeps serving.
    bad = client.predict([handle_file(str(HANKS))], "", 0.8, 0, 20, "v2", 1, 1, *dict(form, model="no such model").values(),
                         api_name="/generate_face")
    assert bad[0].startswith("⚠")
    # Out of a control's range: Gradio's slider refuses it with a message (FaceOptions checks again
    # for callers of the engine), and the app keeps serving.
    with pytest.raises(AppError, match="greater than maximum value 5"):
        client.predict([handle_file(str(HANKS))], "", 9.0, 0, 20, "v2", 1, 1, *form.values(), api_name="/generate_face")
    # A value that is not a number at all: a message naming the control, not Gradio's bare error.
    for bad, message in ((None, "ID weight is empty"), ("abc", "ID weight must be a number")):
        with pytest.raises(AppError, match=message):
            client.predict([handle_file(str(HANKS))], "", bad, 0, 20, "v2", 1, 1, *form.values(), api_name="/generate_face")
    assert client.predict([handle_file(str(HANKS))], "", 0.8, 0, 20, "v2", 1, 1, *form.values(), api_name="/generate_face")[1]


def test_the_face_tab_shows_and_edits_the_prompt_it_draws(browser, face_app):
    """A face run draws the Generate tab's prompt: the Face tab shows it and edits it, both ways, typed or pasted."""
    page = open_page(browser, face_app["url"])
    try:
        page.locator("#prompt textarea").fill("a portrait in a garden")
        page.locator("#negative_prompt textarea").fill("blurry")
        page.locator("#steps input[type=number]").fill("2")
        page.locator("#steps input[type=number]").press("Enter")
        page.get_by_role("tab", name="Face").click()
        face_prompt, face_negative = page.locator("#face_prompt textarea"), page.locator("#face_negative_prompt textarea")
        assert face_prompt.input_value() == "a portrait in a garden" and face_negative.input_value() == "blurry"
        face_prompt.fill("a portrait of a sailor")  # a paste: no key events
        face_prompt.press("End")
        face_prompt.press_sequentially(" at sea", delay=10)  # typed: no keystroke lost to the copy back
        face_negative.fill("")
        page.wait_for_function("(document.querySelector('#prompt textarea')?.value || '') === 'a portrait of a sailor at sea'"
                               " && document.querySelector('#negative_prompt textarea').value === ''", timeout=10_000)
        assert face_prompt.input_value() == "a portrait of a sailor at sea"
        page.locator("#face_photos input[type=file]").set_input_files(str(HANKS))
        page.wait_for_function("(document.querySelector('#face_detect_info')?.innerText || '').includes('Detected')", timeout=60_000)
        page.locator("#face_generate").click()
        page.wait_for_function("document.querySelectorAll('#face_gallery img').length >= 1", timeout=120_000)
        keep_screenshot(page, "face_tab_prompt")
        saved = sorted((face_app["root"] / "outputs").rglob("*.png"), key=lambda path: path.stat().st_mtime)[-1]
        from PIL import Image

        assert Image.open(saved).info["parameters"].startswith("a portrait of a sailor at sea\n")
        # And back: a prompt set on the Generate tab shows on the Face tab.
        page.get_by_role("tab", name="Generate").click()
        page.locator("#prompt textarea").fill("a portrait at night")
        page.get_by_role("tab", name="Face").click()
        page.wait_for_function("(document.querySelector('#face_prompt textarea')?.value || '') === 'a portrait at night'", timeout=10_000)
    finally:
        page.context.close()
