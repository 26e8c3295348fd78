"""A1111's Schedule type in a real browser: its choices follow the sampler, a run records the one that ran, and PNG
Info's Send to Generate picks the sampler and the schedule type again."""
from __future__ import annotations

from PIL import Image

from pipelines.infotext import parse_infotext
from tests.ui.conftest import keep_screenshot
from tests.ui.test_generate_tab import set_number
from tests.ui.test_sd_vae import generate_one


# A1111 1.10's every schedule type, in its order: what DPM++ 2M, Euler a and the other sigma samplers offer here.
ALL_SCHEDULES = ["Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal", "Align Your Steps",
                 "Simple", "Normal", "DDIM", "Beta"]

def pick(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id}").get_by_role("option", name=value, exact=True).click()
    page.wait_for_function(f"(document.querySelector('#{elem_id} input')?.value || '') === {value!r}", timeout=10_000)


def offered(page, elem_id: str) -> list[str]:
    page.locator(f"#{elem_id} input").click()
    texts = [text.split("\n")[-1] for text in page.locator(f"#{elem_id}").get_by_role("option").all_inner_texts()]
    page.keyboard.press("Escape")
    page.locator(f"#{elem_id}").get_by_role("option").first.wait_for(state="detached", timeout=10_000)  # closed before the next pick
    page.locator(f"#{elem_id} input").blur()
    return texts


def test_schedule_choices_follow_the_sampler_and_come_back_from_the_png(page, live_app):
    pick(page, "sampler", "DPM++ 2M")
    page.wait_for_function("(document.querySelector('#schedule_type input')?.value || '') === 'Automatic'", timeout=10_000)
    assert offered(page, "schedule_type") == ALL_SCHEDULES
    pick(page, "schedule_type", "Exponential")
    made = generate_one(page, live_app, "a blue square on a schedule")
    with Image.open(made) as png:
        params = parse_infotext(png.text["parameters"])
    assert (params["Sampler"], params["Schedule type"]) == ("DPM++ 2M", "Exponential")

    pick(page, "sampler", "DDIM")  # it steps through timesteps, no Exponential: the choice goes back to Automatic
    page.wait_for_function("(document.querySelector('#schedule_type input')?.value || '') === 'Automatic'", timeout=10_000)
    assert offered(page, "schedule_type") == ["Automatic", "Uniform", "SGM Uniform"]

    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#png_upload input[type=file]").set_input_files(str(made))
    page.wait_for_function("(document.querySelector('#png_message')?.innerText || '').includes('Read')", timeout=30_000)
    page.click("#png_send")
    page.wait_for_function("(document.querySelector('#schedule_type input')?.value || '') === 'Exponential'", timeout=30_000)
    assert page.input_value("#sampler input") == "DPM++ 2M"
    pick(page, "sampler", "DDIM")  # the sent choices narrow again with the next sampler
    page.wait_for_function("(document.querySelector('#schedule_type input')?.value || '') === 'Automatic'", timeout=10_000)


def test_the_hires_pass_runs_its_own_sampler(page, live_app):
    page.locator("#hires_panel").get_by_text("Hires. fix").click()
    page.wait_for_selector("#hires_sampler input", state="visible")
    assert page.input_value("#hires_sampler input") == "Use same sampler"
    assert offered(page, "hires_schedule_type") == ["Use same scheduler", *ALL_SCHEDULES]
    pick(page, "hires_sampler", "DDIM")  # its schedule types: the spacings only
    assert offered(page, "hires_schedule_type") == ["Use same scheduler", "Automatic", "Uniform", "SGM Uniform"]
    pick(page, "hires_sampler", "DPM++ 2M")
    assert offered(page, "hires_schedule_type") == ["Use same scheduler", *ALL_SCHEDULES]
    pick(page, "hires_schedule_type", "KL Optimal")
    set_number(page, "hires_scale", 2)
    made = generate_one(page, live_app, "a green star in hires")
    with Image.open(made) as png:
        assert png.size == (128, 128)
        params = parse_infotext(png.text["parameters"])
    assert (params["Sampler"], params["Hires sampler"], params["Hires schedule type"]) == ("Euler a", "DPM++ 2M", "KL Optimal")
    keep_screenshot(page, "hires-sampler")


def test_png_info_reads_euler_on_simple_by_the_family_of_the_model_it_sends_to(shared_manager):
    """Forge writes FLUX.1's flow-match Euler as "Euler" + "Simple"; A1111 writes its Euler on the Simple schedule so too.
    The model the values go to (the picture's when installed, else the form's) tells which it is."""
    from ui.png_info_tab import generate_form_values

    text = "a cat\nSteps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Seed: 5, Size: 64x64, Model: {}"
    values, notes = generate_form_values(text.format("tiny-flux"), shared_manager, {"model": "tiny-sd15"})
    assert (values["model"], values["sampler"], values["schedule_type"], notes) == ("tiny-flux", "Flow Euler", "Automatic", [])
    values, notes = generate_form_values(text.format("tiny-sd15"), shared_manager, {"model": "tiny-flux"})
    assert (values["model"], values["sampler"], values["schedule_type"], notes) == ("tiny-sd15", "Euler", "Simple", [])
    values, _ = generate_form_values(text.format("not-here"), shared_manager, {"model": "tiny-sdxl"})  # kept: SDXL's Euler
    assert (values["sampler"], values["schedule_type"]) == ("Euler", "Simple")
    values, notes = generate_form_values(text.format("not-here").replace("Simple", "Karras"), shared_manager, {"model": "tiny-flux"})
    assert (values["sampler"], values["schedule_type"]) == ("Flow Euler", "Automatic")
    assert "FLUX.1 models run their own schedule here; Schedule type Karras was not used." in notes
