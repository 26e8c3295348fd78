"""The Generate tab in a real browser, and the same endpoints through gradio_client."""
from __future__ import annotations

import re

from PIL import Image

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.infotext import parse_infotext

STEP = re.compile(r"step (\d+)/(\d+)")


def set_number(page, elem_id: str, value) -> None:
    field = page.locator(f"#{elem_id} input[type=number]")
    field.fill(str(value))
    field.press("Tab")



def generate_small(page, prompt: str, steps: int, size: int, timeout_ms: int) -> None:
    """Fill the Generate form with a small run, press Generate and wait for the stage breakdown."""
    page.fill("#prompt textarea", prompt)
    set_number(page, "steps", steps)
    set_number(page, "width", size)
    set_number(page, "height", size)
    page.click("#generate")
    page.wait_for_selector("#breakdown table", timeout=timeout_ms)

def test_a_demo_example_fills_the_prompt_size_steps_and_its_cfg(page, live_app):
    from pipelines import demo

    # a fresh form on the demo starts at the demo's own size, steps and CFG (SD 1.5's 7 draws it worse)
    assert float(page.input_value("#cfg input[type=number]")) == demo.DEFAULT_CFG
    assert int(page.input_value("#width input[type=number]")) == demo.DEFAULT_SIZE
    # every example on one page (Gradio pages them otherwise), the last one too
    assert page.locator("text=Pages:").count() == 0
    assert page.get_by_text(demo.EXAMPLE_PROMPTS[-1][:40]).count() == 1
    set_number(page, "cfg", 9)
    page.get_by_text(demo.EXAMPLE_PROMPTS[0]).first.click()
    page.wait_for_function("(document.querySelector('#prompt textarea')?.value || '').length > 0", timeout=10000)
    assert page.input_value("#prompt textarea") == demo.EXAMPLE_PROMPTS[0]
    assert float(page.input_value("#cfg input[type=number]")) == demo.DEFAULT_CFG
    assert int(page.input_value("#width input[type=number]")) == demo.DEFAULT_SIZE
    assert int(page.input_value("#steps input[type=number]")) == demo.DEFAULT_STEPS


def test_generate_on_demo_model_shows_live_steps_and_breakdown(page, live_app):
    page.fill("#prompt textarea", "a lighthouse at dusk")
    set_number(page, "steps", 100)
    # Every text the readout shows, recorded in the page as it is drawn: polling from the test missed updates on a
    # busy machine (the readout changes 4 times a second, ui/session.UPDATE_EVERY_S; the demo's 100 steps take ~2 s).
    # With each one, the running gallery's frame: Gradio's pulse off (ui/style.py: it redraws 60 times a second).
    page.evaluate("""() => {
        window.readouts = []; window.pulses = [];
        new MutationObserver(() => {
            window.readouts.push(document.querySelector('#readout').innerText);
            window.pulses.push(...[...document.querySelectorAll('#gallery [data-testid=status-tracker].generating')]
                                  .map(tracker => getComputedStyle(tracker).animationName));
        }).observe(document.querySelector('#readout'), {subtree: true, childList: true, characterData: true});
    }""")
    page.click("#generate")
    page.wait_for_selector("#breakdown table", timeout=90000)
    seen = []
    for text in page.evaluate("window.readouts"):
        match = STEP.search(text)
        if match:
            seen.append(int(match.group(1)))
            assert match.group(2) == "100"
    pulses = set(page.evaluate("window.pulses"))
    assert pulses == {"none"}, f"the running gallery's frame: {pulses or 'never seen'}"
    distinct = sorted(set(seen))
    assert len(distinct) >= 3, f"the readout did not advance step by step: {distinct}"
    assert seen == sorted(seen), "step numbers went backwards"
    breakdown = page.inner_text("#breakdown")
    for stage in ("text encode", "denoise", "VAE decode", "save"):
        assert stage in breakdown
    assert page.locator("#gallery img").count() >= 1
    saved = list((live_app["root"] / "outputs").rglob("*.png"))
    assert saved, "the image was not saved"
    parameters = parse_infotext(Image.open(saved[-1]).info["parameters"])
    assert parameters["Prompt"] == "a lighthouse at dusk" and parameters["Steps"] == "100"


def test_bad_number_gives_a_message_and_the_app_keeps_serving(page):
    page.fill("#prompt textarea", "x")
    set_number(page, "width", 100)  # not a multiple of 8
    set_number(page, "steps", 2)
    page.click("#generate")
    page.wait_for_function("(document.querySelector('#readout')?.innerText || '').includes('multiple of 8')", timeout=30000)
    set_number(page, "width", 128)
    set_number(page, "height", 128)
    page.click("#generate")
    page.wait_for_selector("#breakdown table", timeout=60000)


def test_api_generate_and_cancel(live_app):
    from gradio_client import Client

    client = Client(live_app["url"], verbose=False)
    result = client.predict(
        DEMO_MODEL_NAME, "api prompt", "", 3, 7.0, 1234, 128, 128, "Euler", 1, 1, "fp32", 1, 0, "uniform", "off", 0.08, api_name="/generate"
    )
    readout, _preview, gallery, breakdown = result  # gr.State outputs are not part of the API
    assert "done" in readout
    assert "denoise" in breakdown
    image_path = gallery[0]["image"] if isinstance(gallery[0], dict) else gallery[0][0]
    image_path = image_path["path"] if isinstance(image_path, dict) else image_path
    info = parse_infotext(Image.open(image_path).info["parameters"])
    assert info["Seed"] == "1234" and info["Size"] == "128x128"
    assert client.predict(api_name="/cancel") == "Nothing is running."
    # A script's runs do not become the form's last-used values (a run from the page does: test_app_tabs).
    assert live_app["settings"].last_generation.get("prompt") != "api prompt"
