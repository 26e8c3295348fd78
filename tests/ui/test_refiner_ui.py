"""The Refiner accordion in a real browser: its list holds the models of the form's family (one added to the folder
since the page opened, when it is opened), a run records A1111's Refiner keys and shows the refiner's stage, and a
sampler it cannot take over from is a message."""
from __future__ import annotations

from PIL import Image

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.infotext import parse_infotext
from tests.ui.conftest import keep_screenshot
from tests.ui.test_generate_tab import set_number
from tests.ui.test_hires_checkpoint_ui import add_models_then_list
from tests.ui.test_schedule_type import offered, pick
from tests.ui.test_sd_vae import generate_one


def test_pick_a_refiner_run_and_a_sampler_it_cannot_take_over_from(page, live_app, model_zoo):
    page.locator("#refiner_panel").get_by_text("Refiner").first.click()
    page.wait_for_selector("#refiner_checkpoint input", state="visible")
    assert page.input_value("#refiner_checkpoint input") == "None"
    assert page.input_value("#refiner_switch_at input[type=number]") == "0.8"
    assert offered(page, "refiner_checkpoint") == ["None", DEMO_MODEL_NAME]
    listed = add_models_then_list(page, live_app, model_zoo, "refiner_checkpoint")
    assert listed[0] == "None" and sorted(listed[1:]) == sorted([DEMO_MODEL_NAME, "tiny-sd15"])
    pick(page, "refiner_checkpoint", "tiny-sd15")
    set_number(page, "refiner_switch_at", 0.5)
    keep_screenshot(page, "refiner-picked")
    made = generate_one(page, live_app, "a red circle, finished by another model")  # 2 steps: 1 on the demo, 1 on the refiner
    with Image.open(made) as png:
        params = parse_infotext(png.text["parameters"])
    assert (params["Model"], params["Refiner"], params["Refiner switch at"]) == (DEMO_MODEL_NAME, "tiny-sd15", "0.5")
    breakdown = page.inner_text("#breakdown")
    assert "refiner" in breakdown and "steps 2-2 on tiny-sd15" in breakdown, breakdown
    keep_screenshot(page, "refiner-done")
    pick(page, "sampler", "Heun")
    page.click("#generate")
    page.wait_for_function("(document.querySelector('#readout')?.innerText || '').startsWith('⚠')", timeout=60_000)
    readout = page.inner_text("#readout")
    assert "cannot take over from Heun mid-way" in readout and "Traceback" not in page.content(), readout
    keep_screenshot(page, "refiner-heun-refused")
