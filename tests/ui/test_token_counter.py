"""A1111's token counter under the prompt boxes, in a real browser on the demo model: it follows the text as it is
typed or pasted, counts the chunks of 75 a long prompt fills, each tab counts its own boxes, and a count never waits
behind a running generation."""
from __future__ import annotations

import re

from pipelines.catalog import DEMO_MODEL_NAME
from tests.ui.conftest import keep_screenshot
from tests.ui.test_generate_tab import set_number


def shows(page, selector: str, text: str, timeout: float = 20000) -> None:
    page.wait_for_function("([s, t]) => (document.querySelector(s)?.innerText || '').trim() === t", arg=[selector, text], timeout=timeout)


def test_the_counters_follow_the_prompts(page, live_app):
    manager = live_app["manager"]
    page.fill("#prompt textarea", "a red circle left of a blue square")
    expected = manager.prompt_tokens(DEMO_MODEL_NAME, "a red circle left of a blue square").label()
    shows(page, "#prompt_tokens", expected)
    assert expected.endswith("/75") and not expected.startswith("0/")
    page.fill("#prompt textarea", "a red circle, " * 20)  # a paste: no key events
    shows(page, "#prompt_tokens", manager.prompt_tokens(DEMO_MODEL_NAME, "a red circle, " * 20).label())
    assert page.inner_text("#prompt_tokens").strip().endswith("/150"), "past 75 tokens the prompt takes a second chunk"
    page.fill("#negative_prompt textarea", "blurry")
    shows(page, "#negative_prompt_tokens", manager.prompt_tokens(DEMO_MODEL_NAME, "blurry").label())
    keep_screenshot(page, "token_counter_generate")

    page.get_by_role("tab", name="img2img").click()
    page.fill("#i2i_prompt textarea", "a green heart")
    shows(page, "#i2i_prompt_tokens", manager.prompt_tokens(DEMO_MODEL_NAME, "a green heart").label())
    assert page.inner_text("#prompt_tokens").strip().endswith("/150"), "the Generate tab's counter keeps its own prompt's count"


def test_a_count_does_not_wait_behind_a_running_generation(page, live_app):
    set_number(page, "steps", 150)
    page.fill("#prompt textarea", "a red circle")
    page.click("#generate")
    page.wait_for_function("/step \\d+/.test((document.querySelector('#readout')?.innerText || ''))", timeout=120000)
    page.fill("#prompt textarea", "a big yellow star at the top right")
    shows(page, "#prompt_tokens", live_app["manager"].prompt_tokens(DEMO_MODEL_NAME, "a big yellow star at the top right").label())
    readout = page.inner_text("#readout")  # "denoise · elapsed 2.1 s / step 41/150 ..." while it runs; "done · ..." after
    step = re.search(r"step (\d+)/150", readout)
    assert step and int(step.group(1)) < 150 and not readout.lower().startswith("done"), f"the count came after the run: {readout!r}"
    page.click("#stop")  # the run is not this test's subject: stopped, or done if it ended first on a busy machine
    page.wait_for_function("/Stopped|done/.test((document.querySelector('#readout')?.innerText || ''))", timeout=120000)
