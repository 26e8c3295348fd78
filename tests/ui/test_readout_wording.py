"""Issue 17 item 2: the after-run readout, the CLI and the API's info say what really happened: an exact
repeat skipped the denoise (not "0 steps at 0.000 s/step")."""
from __future__ import annotations

import pytest

from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.manager import ManagerConfig, PipelineManager
from pipelines.request import GenerationRequest, GenerationResult
from tests.tiny_models import tiny_request
from ui.session import result_markdown


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    root = tmp_path_factory.mktemp("wording")
    return PipelineManager(ManagerConfig(root / "models", root / "outputs", root / "cache", device="cpu", include_hf_cache=False))


def result_with(step_seconds: list[float], cache_notes: dict) -> GenerationResult:
    return GenerationResult([], GenerationRequest(DEMO_MODEL_NAME, "x"), {}, step_seconds, 1.0, 0, "process RSS", "cpu", "fp32", "fp32",
                            cache_notes=cache_notes)


def test_exact_repeat_says_the_denoise_was_skipped(manager):
    request = GenerationRequest(DEMO_MODEL_NAME, "a repeat", steps=3, seed=11, width=64, height=64, save=False)
    first = manager.generate(request)
    assert first.denoise_summary().startswith("3 steps at ") and "it/s" in first.denoise_summary()
    again = manager.generate(request)
    assert again.step_seconds == [] and again.cache_notes["latent cache"].startswith("hit")
    assert again.denoise_summary() == "denoise skipped (exact repeat)"
    readout = result_markdown(again)
    assert "denoise skipped (exact repeat)" in readout and "0 steps" not in readout and "s/step" not in readout
    assert again.summary()["denoise"] == "denoise skipped (exact repeat)"  # the CLI's --json and the API's info


def test_summary_wording_cases():
    assert result_with([0.5, 0.5], {}).denoise_summary() == "2 steps at 0.500 s/step (2.00 it/s)"
    assert result_with([], {"latent cache": "miss"}).denoise_summary() == "no denoise steps"
    mixed = result_with([0.25], {"latent cache": "hit: denoising skipped"}).denoise_summary()
    assert mixed == "1 step at 0.250 s/step (4.00 it/s); other batches skipped the denoise (exact repeat)"


def test_the_breakdown_shows_each_stage_s_note(shared_manager):
    """Each stage's note (that the prompt is edited, the VAE dtype) is listed under the breakdown's times."""
    result = shared_manager.generate(tiny_request("sd15", prompt="a [red:blue:0.5] cat", steps=4, save=False))
    notes = result_markdown(result).split("\n\n")[-1].splitlines()
    assert "- **text encode**: prompt editing: 2 prompts (steps 0-2, 3); prompt memo miss" in notes, notes
    assert "- **VAE decode**: fp32" in notes and all(line.startswith("- **") for line in notes), notes  # (a model already loaded has no load note)
    assert result.stage_details["text encode"].startswith("prompt editing") and "stage_details" in result.summary()
