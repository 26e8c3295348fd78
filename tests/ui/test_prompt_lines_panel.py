"""Generate's *Prompts from file or textbox* panel (A1111's script) in a real browser: a list typed or uploaded runs one
generation per line over the form, the readout names the line, a bad line is a message before anything runs."""
from __future__ import annotations

import time
from pathlib import Path

from PIL import Image

from pipelines.infotext import parse_infotext
from tests.ui.conftest import click_for_outcome, keep_screenshot, settled_text
from tests.ui.test_generate_tab import set_number


def pngs(root: Path) -> set[Path]:
    return {p for p in (root / "outputs").glob("20*/*.png")}


def open_panel(page) -> None:
    page.locator("#lines_panel").get_by_text("Prompts from file or textbox").click()
    page.wait_for_selector("#lines_text textarea", state="visible")
    time.sleep(0.5)  # the accordion opening: a value typed meanwhile can be lost


def run_lines(page, timeout_ms: int = 180_000) -> str:
    return click_for_outcome(page, "#lines_generate", "#readout", "Done:|⚠|Stopped", timeout_ms)


def test_each_line_runs_and_the_pngs_say_so(page, live_app, tmp_path):
    page.fill("#prompt textarea", "on blue")
    set_number(page, "steps", 2)
    set_number(page, "width", 64)
    set_number(page, "height", 64)
    set_number(page, "seed", 40)
    open_panel(page)
    listing = tmp_path / "list.txt"
    listing.write_text('a red circle\n--prompt "a green star" --steps 3 --seed 7\n', encoding="utf-8")
    page.locator("#lines_upload input[type=file]").set_input_files(str(listing))
    page.wait_for_function("(document.querySelector('#lines_text textarea')?.value || '').includes('a green star')", timeout=30_000)
    page.locator("#lines_iterate_seed input").check()
    before = pngs(live_app["root"])
    readout = run_lines(page)
    keep_screenshot(page, "prompt-lines-done")
    assert readout.startswith("Done: 2 lines, 2 images."), readout
    made = sorted(pngs(live_app["root"]) - before, key=lambda p: p.name)
    params = [parse_infotext(Image.open(p).info["parameters"]) for p in made]
    assert [(p["Prompt"], p["Steps"], p["Seed"]) for p in params] == [("a red circle on blue", "2", "40"), ("a green star on blue", "3", "7")]
    assert page.locator("#gallery img").count() >= 2


def test_a_bad_line_is_a_message_and_nothing_runs(page, live_app):
    open_panel(page)
    page.fill("#lines_text textarea", "a fine one\n--stpes 3 --prompt typo")
    before = pngs(live_app["root"])
    readout = run_lines(page, timeout_ms=30_000)
    assert readout.startswith("⚠ Line 2: unknown option --stpes"), readout
    page.fill("#lines_text textarea", "a fine one\n--steps 900")
    readout = run_lines(page, timeout_ms=30_000)
    assert readout.startswith("⚠ Line 2: Steps must be between 1 and 150"), readout
    assert pngs(live_app["root"]) == before


def test_an_oversized_list_is_refused_and_the_box_keeps_its_lines(page, tmp_path):
    open_panel(page)
    page.fill("#lines_text textarea", "a red circle")
    huge = tmp_path / "huge.txt"
    huge.write_bytes(b"a blue square\n" * 80_000)  # 1.1 MB
    page.locator("#lines_upload input[type=file]").set_input_files(str(huge))
    page.wait_for_function("(document.querySelector('#readout')?.innerText || '').includes('over 1,000 kB')", timeout=30_000)
    assert settled_text(page, "#readout").startswith("⚠ The list is over 1,000 kB; split it (at most 1,000 lines run at once).")
    assert page.locator("#lines_text textarea").input_value() == "a red circle"
