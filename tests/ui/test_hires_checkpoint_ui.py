"""The Hires checkpoint dropdown in a real browser: it lists the models of the form's family (one added to the folder
since the page opened, when it is opened), and a run records the first pass's model and the hires pass's."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.infotext import parse_infotext
from tests.tiny_models import copy_model
from tests.ui.conftest import keep_screenshot
from tests.ui.test_generate_tab import set_number
from tests.ui.test_schedule_type import offered, pick
from tests.ui.test_sd_vae import generate_one


def add_models_then_list(page, live_app, model_zoo, elem_id: str) -> list[str]:
    """Add an SD 1.5 and an SDXL model to the folder after the page opened, then the dropdown `elem_id`'s choices once
    opening it has read the models again (the SDXL one must not be offered after the demo, an SD 1.5 model)."""
    copy_model(model_zoo["sd15"], Path(live_app["root"]) / "models", "tiny-sd15")
    copy_model(model_zoo["sdxl"], Path(live_app["root"]) / "models", "tiny-sdxl")
    live_app["manager"].refresh()
    page.locator(f"#{elem_id} input").click()  # opening it reads the models again
    page.locator(f"#{elem_id}").get_by_role("option", name="tiny-sd15", exact=True).wait_for(timeout=10_000)
    page.keyboard.press("Escape")
    page.locator(f"#{elem_id} input").blur()
    return offered(page, elem_id)


def test_pick_another_model_for_the_hires_pass(page, live_app, model_zoo):
    page.locator("#hires_panel").get_by_text("Hires. fix").click()
    page.wait_for_selector("#hires_checkpoint input", state="visible")
    assert page.input_value("#hires_checkpoint input") == "Use same checkpoint"
    assert offered(page, "hires_checkpoint") == ["Use same checkpoint", DEMO_MODEL_NAME]
    listed = add_models_then_list(page, live_app, model_zoo, "hires_checkpoint")
    assert listed[0] == "Use same checkpoint" and sorted(listed[1:]) == sorted([DEMO_MODEL_NAME, "tiny-sd15"])  # the models tab's order
    pick(page, "hires_checkpoint", "tiny-sd15")
    set_number(page, "hires_scale", 2)
    keep_screenshot(page, "hires-checkpoint-picked")
    made = generate_one(page, live_app, "a red circle, detailed by another model")
    with Image.open(made) as png:
        assert png.size == (128, 128)
        params = parse_infotext(png.text["parameters"])
    assert (params["Model"], params["Hires checkpoint"]) == (DEMO_MODEL_NAME, "tiny-sd15")
    assert "on tiny-sd15" in page.inner_text("#breakdown")
    keep_screenshot(page, "hires-checkpoint-done")
