"""The Generate tab's LoRA picker in a real browser: it inserts the tag once, and the run applies the LoRA."""
from __future__ import annotations

import pytest
from PIL import Image

from pipelines.infotext import parse_infotext
from tests.lora.make_loras import write_lora
from tests.tiny_models import copy_model
from tests.ui.conftest import keep_screenshot, open_page, start_app
from tests.ui.test_generate_tab import set_number


@pytest.fixture(scope="module")
def lora_app(tmp_path_factory, model_zoo, tiny_pipes):
    root = tmp_path_factory.mktemp("lora-app")
    copy_model(model_zoo["sd15"], root / "models", "tiny-sd15")
    write_lora(root / "models" / "Lora", "film_grain", tiny_pipes["sd15"], "sd15", "kohya")
    info, demo = start_app(root)
    yield info
    demo.close()


def choose(page, elem_id: str, option: str) -> None:
    page.click(f"#{elem_id} input")
    page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()


def test_pick_a_lora_inserts_its_tag_once_and_generation_applies_it(browser, lora_app):
    page = open_page(browser, lora_app["url"])
    try:
        choose(page, "model", "tiny-sd15")
        page.fill("#prompt textarea", "a foggy harbour")
        choose(page, "lora_picker", "film_grain (SD 1.5)")
        page.wait_for_function(
            "(document.querySelector('#prompt textarea')?.value || '').endsWith('<lora:film_grain:1>')", timeout=15000)
        assert page.input_value("#prompt textarea") == "a foggy harbour <lora:film_grain:1>"
        # The picker is back to empty, ready for the next pick.
        page.wait_for_function("document.querySelector('#lora_picker input').value === ''", timeout=15000)

        choose(page, "lora_picker", "film_grain (SD 1.5)")
        page.wait_for_timeout(1000)
        assert page.input_value("#prompt textarea") == "a foggy harbour <lora:film_grain:1>", "the tag was added twice"

        set_number(page, "steps", 2)
        set_number(page, "width", 64)
        set_number(page, "height", 64)
        page.click("#generate")
        page.wait_for_selector("#breakdown table", timeout=120000)
        assert "LoRA load" in page.inner_text("#breakdown")
        saved = sorted((lora_app["root"] / "outputs").rglob("*.png"), key=lambda p: p.stat().st_mtime)
        assert saved, "the image was not saved"
        parameters = parse_infotext(Image.open(saved[-1]).info["parameters"])
        assert "film_grain" in parameters.get("Lora hashes", "")
        assert parameters["Prompt"].endswith("<lora:film_grain:1>")
    finally:
        keep_screenshot(page, "lora_picker")
        page.context.close()
