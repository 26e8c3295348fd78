"""SD VAE in a real browser: the dropdown lists models/VAE when it opens, a run decodes with the file and records it,
PNG Info's Send to Generate picks it again (or Automatic for a picture made without one)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import save_file

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.infotext import parse_infotext
from tests.ldm_layout import vae_to_ldm
from tests.ui.conftest import open_page
from tests.ui.test_generate_tab import generate_small


@pytest.fixture(scope="module")
def vae_file(live_app):
    manager = live_app["manager"]
    with manager.use(DEMO_MODEL_NAME) as model:
        vae = model.pipe.vae
        state = vae_to_ldm({k: v.detach().float().cpu().clone().contiguous() for k, v in vae.state_dict().items()}, dict(vae.config))
    path = Path(live_app["root"]) / "models" / "VAE" / "demo-copy.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def pngs(live_app) -> set[Path]:
    return set((Path(live_app["root"]) / "outputs").glob("20*/*.png"))


def generate_one(page, live_app, prompt: str) -> Path:
    """Generate and wait for the run's own PNG (the breakdown of an earlier run is already on the page)."""
    before = pngs(live_app)
    generate_small(page, prompt, steps=2, size=64, timeout_ms=120_000)
    deadline = time.monotonic() + 120
    while not pngs(live_app) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    [made] = pngs(live_app) - before
    return made


def pick_vae(page, name: str) -> None:
    page.locator("#vae input").click()  # opening it reads models/VAE again
    page.locator("#vae").get_by_role("option", name=name, exact=True).click()
    page.wait_for_function(f"(document.querySelector('#vae input')?.value || '') === {name!r}", timeout=10_000)


def test_pick_a_vae_file_generate_and_send_it_back(page, browser, live_app, vae_file):
    pick_vae(page, "demo-copy.safetensors")
    made = generate_one(page, live_app, "a red circle with a vae")
    with Image.open(made) as png:
        params = parse_infotext(png.text["parameters"])
    assert params["VAE"] == "demo-copy.safetensors" and len(params["VAE hash"]) == 10
    pick_vae(page, "Automatic")
    plain = generate_one(page, live_app, "a red circle without")
    with Image.open(plain) as png:
        assert "VAE" not in parse_infotext(png.text["parameters"]), "Automatic was not picked"

    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#png_upload input[type=file]").set_input_files(str(made))
    page.wait_for_function("(document.querySelector('#png_message')?.innerText || '').includes('Read')", timeout=30_000)
    page.click("#png_send")
    page.wait_for_function("(document.querySelector('#vae input')?.value || '') === 'demo-copy.safetensors'", timeout=30_000)
    page = open_page(browser, live_app["url"])  # a fresh PNG Info drop box
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#png_upload input[type=file]").set_input_files(str(plain))
    page.wait_for_function("(document.querySelector('#png_message')?.innerText || '').includes('Read')", timeout=30_000)
    page.get_by_role("tab", name="Generate").click()
    pick_vae(page, "demo-copy.safetensors")  # not the value the send must set
    page.get_by_role("tab", name="PNG Info").click()
    page.click("#png_send")
    page.wait_for_function("(document.querySelector('#vae input')?.value || '') === 'Automatic'", timeout=30_000)
    page.context.close()


def test_an_api_client_names_files_added_after_the_page_was_built(live_app, vae_file, tmp_path):
    """Gradio checks a preprocessed endpoint's dropdown values against the list the page was built with; a VAE or an
    ESRGAN file put in models/ after the start is the request's to check (as the model dropdown's), not refused there."""
    from gradio_client import Client

    from pipelines.request import GenerationRequest
    from tests.upscale import tiny_state, write_esrgan
    from ui.generate_tab import FORM_FIELDS

    write_esrgan(Path(live_app["root"]) / "models" / "ESRGAN" / "late_x2.safetensors", tiny_state(2, seed=3))
    start = GenerationRequest(DEMO_MODEL_NAME, "late files", steps=2, seed=5, width=64, height=64, sampler="Euler",
                              vae=vae_file.name, hires_scale=1.5, hires_upscaler="late_x2", hires_steps=1)
    form = tuple(getattr(start, name) for name in FORM_FIELDS)
    client = Client(live_app["url"], verbose=False)
    progress, _grid, table, *_rest = client.predict("seed", "5", "", "", "", "", 0, False, 1, False, [], 0.8, 0, *form,
                                                    api_name="/experiment")
    assert progress.startswith("**Done: 1 of 1 cells.**"), progress
    cells = sorted((Path(live_app["root"]) / "outputs" / "experiments").glob("*/cells.json"))[-1].read_text()
    assert "VAE: demo-copy.safetensors" in cells and "Hires upscaler: late_x2" in cells, cells[:2000]
    typo = dict(zip(FORM_FIELDS, form)) | {"vae": "no-such-vae.safetensors"}
    refused, _grid, table, *_rest = client.predict("seed", "5", "", "", "", "", 0, False, 1, False, [], 0.8, 0, *typo.values(),
                                                   api_name="/experiment")
    assert refused.startswith("**Done: 0 of 1 cells, 1 failed.**"), refused
    assert "no-such-vae.safetensors" in str(table["data"]), table  # the request's own message, in the cell's row
