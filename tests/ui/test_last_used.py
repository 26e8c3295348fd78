"""The Generate form's last-used values: what a damaged or foreign settings file cannot put in the form."""
from __future__ import annotations

from pipelines.catalog import DEMO_MODEL_NAME
from ui.last_used import clean_last_generation


def test_bad_values_are_dropped_with_a_message_and_good_ones_kept(make_manager):
    manager = make_manager()
    last = {
        "model": DEMO_MODEL_NAME, "prompt": "kept", "steps": 12, "cfg_scale": 4.5, "seed": 1e30, "width": "wide",
        "batch_size": 99, "sampler": "No Such Sampler", "vae_dtype": "fp32", "no_such_field": 1, "save": False,
    }
    cleaned, problems = clean_last_generation(manager, last)
    assert cleaned == {"model": DEMO_MODEL_NAME, "prompt": "kept", "steps": 12, "cfg_scale": 4.5}
    assert len(problems) == 4
    assert any(p.startswith("seed 1e+30") and "Seed must be a whole number" in p for p in problems)
    assert any(p.startswith("width 'wide'") for p in problems)
    assert any(p.startswith("batch_size 99") and "between 1 and 8" in p for p in problems)
    assert any(p.startswith("sampler 'No Such Sampler'") for p in problems)


def test_unknown_model_and_non_dict(make_manager):
    manager = make_manager()
    cleaned, problems = clean_last_generation(manager, {"model": "gone-model", "seed": 42})
    assert cleaned == {"model": manager.default_model(), "seed": 42} and problems == []
    assert clean_last_generation(manager, [1, 2]) == ({}, [])
    assert clean_last_generation(manager, {}) == ({}, [])


def test_only_runs_from_a_page_become_the_last_used_values():
    from types import SimpleNamespace

    from ui.last_used import started_on_a_page

    assert started_on_a_page(None), "a direct call (no request) counts as the page's"
    assert started_on_a_page(SimpleNamespace(headers={"user-agent": "Mozilla/5.0"}))
    assert not started_on_a_page(SimpleNamespace(headers={"x-gradio-user": "api"})), "gradio_client"
    assert not started_on_a_page(SimpleNamespace(headers={"x-gradio-user": "mcp"})), "Gradio's MCP server"


def test_a_schedule_type_is_kept_with_the_sampler_it_was_used_with(make_manager):
    """DDIM has no Exponential (it steps through timesteps); the last run's DPM++ 2M does."""
    manager = make_manager()
    cleaned, problems = clean_last_generation(manager, {"model": DEMO_MODEL_NAME, "sampler": "DPM++ 2M", "schedule_type": "Exponential"})
    assert cleaned == {"model": DEMO_MODEL_NAME, "sampler": "DPM++ 2M", "schedule_type": "Exponential"} and problems == []
    cleaned, problems = clean_last_generation(manager, {"model": DEMO_MODEL_NAME, "sampler": "DDIM", "schedule_type": "Exponential"})
    assert cleaned == {"model": DEMO_MODEL_NAME, "sampler": "DDIM"}
    assert len(problems) == 1 and problems[0].startswith("schedule_type 'Exponential'") and "not available with DDIM" in problems[0]
