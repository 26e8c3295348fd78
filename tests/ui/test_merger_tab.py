"""The Checkpoint Merger tab in a real browser: merge two tiny single files, the new model in Generate's list and
generating; a missing model as a message, nothing written."""
from __future__ import annotations

import pytest
from PIL import Image

from pipelines.infotext import parse_infotext

from tests.ldm_layout import export_ldm_checkpoint
from tests.pipelines.test_merge import write_variant
from tests.tiny_models import save_config_only
from tests.ui.conftest import open_page, start_app
from tests.ui.test_generate_tab import generate_small


@pytest.fixture(scope="module")
def merger_app(tmp_path_factory, tiny_pipes):
    root = tmp_path_factory.mktemp("merger-app")
    models = root / "models"
    a = export_ldm_checkpoint(tiny_pipes["sd15"], models / "anime-a.safetensors", "sd15")
    save_config_only(tiny_pipes["sd15"], models / "anime-a.config")
    write_variant(a, models / "photo-b.safetensors", 1.5, 0.01)
    info, demo = start_app(root)
    yield info
    demo.close()


@pytest.fixture
def merger_page(browser, merger_app):
    page = open_page(browser, merger_app["url"])
    page.get_by_role("tab", name="Checkpoint Merger").click()
    page.wait_for_selector("#merger_run", state="visible")
    yield page
    page.context.close()


def choose(page, elem_id: str, name: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id}").get_by_role("option", name=name, exact=True).click()


def models_folder(app) -> list[str]:
    return sorted(p.name for p in (app["root"] / "models").glob("*.safetensors"))


def test_merge_then_generate_with_the_new_model(merger_page, merger_app):
    page = merger_page
    choose(page, "merger_primary", "anime-a")
    choose(page, "merger_secondary", "photo-b")
    page.wait_for_function("document.querySelector('#merger_name textarea, #merger_name input').placeholder"
                           " === 'anime-a_0.7-photo-b_0.3-Weighted_sum-merged'", timeout=10_000)
    page.click("#merger_run")
    page.wait_for_function("/Merged|⚠/.test(document.querySelector('#merger_readout')?.innerText || '')", timeout=60_000)
    readout = page.inner_text("#merger_readout")
    assert readout.startswith("Merged anime-a_0.7-photo-b_0.3-Weighted_sum-merged in "), readout
    assert "anime-a_0.7-photo-b_0.3-Weighted_sum-merged.safetensors" in models_folder(merger_app)
    page.get_by_role("tab", name="Generate").click()
    page.locator("#model input").click()
    page.locator("#model").get_by_role("option", name="anime-a_0.7-photo-b_0.3-Weighted_sum-merged", exact=True).click()
    generate_small(page, "a merged model", steps=2, size=64, timeout_ms=120_000)
    [saved] = sorted((merger_app["root"] / "outputs").rglob("*.png"))
    with Image.open(saved) as png:
        assert parse_infotext(png.text["parameters"])["Model"] == "anime-a_0.7-photo-b_0.3-Weighted_sum-merged"


def test_a_missing_model_or_a_taken_name_is_a_message_and_nothing_is_written(merger_page, merger_app):
    page = merger_page
    before = models_folder(merger_app)
    choose(page, "merger_primary", "anime-a")
    page.get_by_label("Add difference").check()
    choose(page, "merger_secondary", "photo-b")
    page.click("#merger_run")
    page.wait_for_function("(document.querySelector('#merger_readout')?.innerText || '').includes('⚠')", timeout=30_000)
    assert page.inner_text("#merger_readout") == "⚠ Choose the tertiary (C) model."
    page.get_by_label("Weighted sum").check()
    page.fill("#merger_name textarea, #merger_name input", "photo-b")
    page.click("#merger_run")
    page.wait_for_function("(document.querySelector('#merger_readout')?.innerText || '').includes('exists already')", timeout=30_000)
    assert models_folder(merger_app) == before
    page.click("#merger_stop")
    page.wait_for_function("(document.querySelector('#merger_readout')?.innerText || '') === 'Nothing is merging.'", timeout=10_000)


def test_bake_in_vae_lists_the_vae_files_and_writes_the_chosen_one_in(browser, merger_app):
    import torch
    from safetensors.torch import load_file

    from tests.pipelines.test_merge import write_vae_file

    models = merger_app["root"] / "models"
    vae = write_vae_file(models / "anime-a.safetensors", models / "VAE" / "vivid.safetensors", 1.02)  # after the page was built
    page = open_page(browser, merger_app["url"])
    page.get_by_role("tab", name="Checkpoint Merger").click()  # opening the tab lists models/VAE again
    page.wait_for_selector("#merger_run", state="visible")
    choose(page, "merger_primary", "anime-a")
    choose(page, "merger_secondary", "photo-b")
    page.fill("#merger_name textarea, #merger_name input", "vivid-merge")
    choose(page, "merger_bake_vae", "vivid.safetensors")
    page.click("#merger_run")
    page.wait_for_function("/Merged|⚠/.test(document.querySelector('#merger_readout')?.innerText || '')", timeout=60_000)
    readout = page.inner_text("#merger_readout")
    assert readout.startswith("Merged vivid-merge in ") and "VAE baked in: vivid.safetensors" in readout, readout
    merged = load_file(str(models / "vivid-merge.safetensors"))
    baked = [key for key in merged if key.startswith("first_stage_model.")]
    assert baked and all(torch.equal(merged[key], vae[key.removeprefix("first_stage_model.")]) for key in baked)
    page.context.close()
