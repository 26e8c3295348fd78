"""The Token merging accordion in a real browser: the ratio set there reaches the run (its PNG says it); 0 is off."""
from __future__ import annotations

from PIL import Image

from pipelines.infotext import parse_infotext
from tests.ui.conftest import keep_screenshot
from tests.ui.test_generate_tab import set_number
from tests.ui.test_sd_vae import generate_one


def test_set_a_ratio_and_generate(page, live_app):
    page.locator("#token_merging_panel").get_by_text("Token merging").first.click()
    page.wait_for_selector("#token_merging_ratio input[type=number]", state="visible")
    assert page.input_value("#token_merging_ratio input[type=number]") == "0"
    set_number(page, "token_merging_ratio", 0.5)
    keep_screenshot(page, "token-merging-set")
    made = generate_one(page, live_app, "a red circle, fewer tokens")
    with Image.open(made) as png:
        assert parse_infotext(png.text["parameters"])["Token merging ratio"] == "0.5"
    set_number(page, "token_merging_ratio", 0)
    plain = generate_one(page, live_app, "a red circle, every token")
    with Image.open(plain) as png:
        assert "Token merging ratio" not in parse_infotext(png.text["parameters"])
