"""The Experiments tab in a real browser: a 2x2 grid on the demo model, its table, plots and files."""
from __future__ import annotations

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.request import GenerationRequest
from tests.ui.test_generate_tab import set_number
from ui.generate_tab import FORM_FIELDS


def choose(page, elem_id: str, option: str) -> None:
    """Pick `option` in this dropdown's own list (another dropdown's list may still be open)."""
    page.click(f"#{elem_id} input")
    page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()


def fill_values(page, elem_id: str, text: str) -> None:
    field = page.locator(f"#{elem_id} textarea")
    field.fill(text)
    # Blur, not Tab: Tab focuses the next axis dropdown, which opens its list over the controls below
    # (a page too short to scroll never closes it).
    field.evaluate("element => element.blur()")


def progress_shows(page, text: str, timeout: int = 30000) -> None:
    page.wait_for_function(f"(document.querySelector('#exp_progress')?.innerText || '').includes({text!r})", timeout=timeout)


def test_two_by_two_grid_on_the_demo_model(page, live_app):
    # The experiment starts from the Generate tab's current settings.
    page.fill("#prompt textarea", "an experiment")
    set_number(page, "steps", 2)
    set_number(page, "width", 64)
    set_number(page, "height", 64)
    set_number(page, "seed", 99)
    page.get_by_role("tab", name="Experiments").click()

    # Bad values and a grid above the Settings limit (16) are refused before anything runs.
    choose(page, "exp_x_setting", "Steps")
    fill_values(page, "exp_x_values", "0-2")
    page.click("#exp_run")
    progress_shows(page, "X axis (Steps): '0' is not valid")
    fill_values(page, "exp_x_values", "2-6")
    choose(page, "exp_y_setting", "CFG scale")
    fill_values(page, "exp_y_values", "1-7 [4]")
    page.click("#exp_run")
    progress_shows(page, "20 cells")
    assert "above the limit of 16" in page.inner_text("#exp_progress")

    fill_values(page, "exp_x_values", "2,3")
    fill_values(page, "exp_y_values", "1, 7")
    choose(page, "exp_baseline", "Steps: 3, CFG scale: 7")  # the picker lists the cells once the axes parse
    page.click("#exp_run")
    progress_shows(page, "Done: 4 of 4 cells", timeout=120000)

    page.wait_for_selector("#exp_grid img", timeout=15000)  # the results show in a step right after "Done"
    assert page.locator("#exp_grid img").count() == 1
    table = page.inner_text("#exp_table")
    for label in ("Steps: 2, CFG scale: 1", "Steps: 3, CFG scale: 1", "Steps: 2, CFG scale: 7", "Steps: 3, CFG scale: 7"):
        assert label in table
    for column in ("denoise s", "it/s", "peak memory MiB", "VAE dtype", "PSNR dB", "SSIM"):
        assert column in table
    assert "identical" in table  # the baseline against itself
    page.wait_for_selector("#exp_stage_plot canvas, #exp_stage_plot svg", timeout=30000)
    page.wait_for_selector("#exp_step_plot canvas, #exp_step_plot svg", timeout=30000)
    files = page.inner_text("#exp_files").replace("\n", "")  # the name and extension are separate elements
    for name in ("grid.png", "cells.csv", "cells.json", "experiment.json"):
        assert name in files
    saved = list((live_app["root"] / "outputs" / "experiments").glob("*/cells.csv"))
    assert saved and "Steps: 3, CFG scale: 7" in saved[-1].read_text()
    assert "99" in page.inner_text("#exp_progress")  # the Generate tab's seed, in every cell


def test_api_experiment_endpoint(live_app):
    from gradio_client import Client

    client = Client(live_app["url"], verbose=False)
    start = GenerationRequest(DEMO_MODEL_NAME, "api experiment", steps=2, seed=5, width=64, height=64, sampler="Euler", vae_dtype="fp32")
    form = tuple(getattr(start, name) for name in FORM_FIELDS)  # the Generate form's inputs follow the tab's own
    progress, grid, table, _bars, _lines, files = client.predict(
        "seed", "5, 6", "", "", "", "", 0, False, 1, False, [], 0.8, 0, *form, api_name="/experiment")
    assert progress.startswith("**Done: 2 of 2 cells.**")
    assert grid and [row[1] for row in table["data"]] == ["Seed: 5", "Seed: 6"]
    assert sorted(str(f).rsplit("/", 1)[-1] for f in files) == ["cells.csv", "cells.json", "experiment.json", "grid.png"]
    bad = client.predict("steps", "1-5 (+0)", "", "", "", "", 0, False, 1, False, [], 0.8, 0, *form, api_name="/experiment")
    assert bad[0] == "⚠ X axis: The Steps axis value '1-5 (+0)' has a step of 0."
    assert client.predict(api_name="/cancel_experiment") == "Nothing is running."


def test_fill_puts_every_choice_of_the_setting_in_the_values(page, live_app):
    """A1111's fill button: the samplers of the Generate tab's model, the installed models; a number setting keeps what
    was typed."""
    from pipelines.samplers import sampler_names

    page.get_by_role("tab", name="Experiments").click()
    choose(page, "exp_x_setting", "Sampler")
    page.click("#exp_x_fill")
    family = live_app["manager"].entry(DEMO_MODEL_NAME).family
    page.wait_for_function("(document.querySelector('#exp_x_values textarea')?.value || '').includes('Euler a')", timeout=10_000)
    assert page.input_value("#exp_x_values textarea") == ", ".join(sampler_names(family))
    choose(page, "exp_y_setting", "Model")
    page.click("#exp_y_fill")
    page.wait_for_function("(document.querySelector('#exp_y_values textarea')?.value || '') !== ''", timeout=10_000)
    assert page.input_value("#exp_y_values textarea") == DEMO_MODEL_NAME
    choose(page, "exp_z_setting", "Steps")
    fill_values(page, "exp_z_values", "10-30 (+10)")
    page.click("#exp_z_fill")
    page.wait_for_selector("text=has no list of choices", timeout=10_000)
    assert page.input_value("#exp_z_values textarea") == "10-30 (+10)"
