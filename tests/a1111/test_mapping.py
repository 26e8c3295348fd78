"""A1111 sampler and scheduler names -> Likeness's samplers (no app needed)."""
from __future__ import annotations

import pytest

from pipelines.errors import InvalidRequest
from pipelines.families import Family
from ui.a1111.mapping import resolve_sampler


@pytest.mark.parametrize("sampler, scheduler, expected, warned", [
    ("DPM++ 2M", "Karras", ("DPM++ 2M", "Karras"), False),
    ("DPM++ 2M", "karras", ("DPM++ 2M", "Karras"), False),
    ("DPM++ 2M", None, ("DPM++ 2M", "Automatic"), False),  # Automatic: Karras when it runs (A1111's default)
    ("DPM++ 2M Karras", None, ("DPM++ 2M", "Karras"), False),  # A1111's old combined name
    ("DPM++ 2M Karras", "Karras", ("DPM++ 2M", "Karras"), False),
    ("DPM++ 2M Karras", "Uniform", ("DPM++ 2M", "Karras"), False),  # the name's own wins, as A1111's
    ("k_euler_a", None, ("Euler a", "Automatic"), False),  # A1111's alias
    ("Euler", "Automatic", ("Euler", "Automatic"), False),
    ("Euler", "Karras", ("Euler", "Karras"), False),
    ("Euler a", "Karras", ("Euler a", "Karras"), False),  # computed here: diffusers' Euler a has no Karras setting
    ("DDIM", "Karras", ("DDIM", "Automatic"), True),  # DDIM steps through timesteps: spacings only, a warning
    ("Euler a", "sgm_uniform", ("Euler a", "SGM Uniform"), False),
    ("DDIM", "SGMUniform", ("DDIM", "SGM Uniform"), False),  # A1111's alias of the label
    ("UniPC", "Exponential", ("UniPC", "Exponential"), False),
    ("UniPC", "kl_optimal", ("UniPC", "KL Optimal"), False),
    ("Euler a", "align_your_steps", ("Euler a", "Align Your Steps"), False),
    ("DPM++ SDE", "Polyexponential", ("DPM++ SDE", "Polyexponential"), False),
    ("Heun", "simple", ("Heun", "Simple"), False),  # FLUX's own name too, but an SD schedule on an SD model
    ("DPM++ 2M SDE", "beta", ("DPM++ 2M SDE", "Beta"), False),
    ("DPM++ 2M SDE Exponential", None, ("DPM++ 2M SDE", "Exponential"), False),
    ("k_dpmpp_2m_sde", None, ("DPM++ 2M SDE", "Automatic"), False),
    ("LMS", "Uniform", ("LMS", "Uniform"), False),
    ("LCM", None, ("LCM", "Automatic"), False),
    ("LCM", "Karras", ("LCM", "Automatic"), True),
])
def test_unet_samplers(sampler, scheduler, expected, warned):
    warnings: list[str] = []
    assert resolve_sampler(Family.SDXL, sampler, scheduler, warnings) == expected
    assert bool(warnings) == warned


def test_flux_runs_flow_euler_and_says_so():
    warnings: list[str] = []
    assert resolve_sampler(Family.FLUX, "Euler", "Simple", warnings) == ("Flow Euler", "Automatic") and not warnings
    assert resolve_sampler(Family.FLUX, "Euler a", None, warnings) == ("Flow Euler", "Automatic") and "replaced" in warnings[0]
    assert resolve_sampler(Family.FLUX, "Euler", "Beta", warnings) == ("Flow Euler", "Automatic") and "not used" in warnings[1]


@pytest.mark.parametrize("sampler, scheduler", [("DPM adaptive", None), ("", None), ("Euler", "wobbly"), (3, None)])
def test_unknown_names_are_refused(sampler, scheduler):
    with pytest.raises(InvalidRequest):
        resolve_sampler(Family.SD15, sampler, scheduler, [])


def test_the_refusal_lists_the_samplers_and_the_schedule_types():
    with pytest.raises(InvalidRequest, match=r"Likeness has: Euler a, Euler, DPM\+\+ 2M, DPM\+\+ 2M SDE, DPM\+\+ 3M SDE, DPM\+\+ SDE, "
                                             r"Heun, DPM2, DPM2 a, LMS, DDIM, UniPC, LCM \(with the scheduler Automatic, Uniform, "
                                             r"Karras, Exponential, Polyexponential, SGM Uniform, KL Optimal, Align Your Steps, "
                                             r"Simple, Normal, DDIM, Beta\)"):
        resolve_sampler(Family.SD15, "DPM adaptive", None, [])


@pytest.mark.parametrize(("sampler", "scheduler", "ours"), [
    ("k_dpmpp_sde", "Karras", ("DPM++ SDE", "Karras")), ("DPM2 a", "karras", ("DPM2 a", "Karras")), ("k_heun", None, ("Heun", "Automatic")),
    ("DPM++ 3M SDE", "Karras", ("DPM++ 3M SDE", "Karras")), ("DPM2 Karras", None, ("DPM2", "Karras"))])
def test_a1111s_second_order_and_3m_names(sampler, scheduler, ours):
    warnings: list[str] = []
    assert resolve_sampler(Family.SD15, sampler, scheduler, warnings) == ours and not warnings


class FolderManager:
    """What find_model reads from the manager: the catalog and the cache folder (hashes.json)."""

    def __init__(self, entries, cache_dir):
        self.entries, self.refreshed = entries, 0
        self.config = type("Config", (), {"cache_dir": cache_dir})()

    def models(self):
        return self.entries

    def refresh(self):
        self.refreshed += 1


def test_a1111_clients_name_a_model_by_title_name_file_name_or_hash(tmp_path):
    from pipelines.catalog import ModelEntry
    from pipelines.errors import ModelNotFound
    from pipelines.hashes import model_hash
    from ui.a1111.mapping import find_model, model_item

    checkpoint = tmp_path / "models" / "dreamy.safetensors"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"not really weights, only hashed")
    cache = tmp_path / "cache"
    entry = ModelEntry("dreamy", Family.SD15, "single-file", checkpoint, checkpoint.stat().st_size)
    manager = FolderManager([entry], cache)
    assert model_item(entry, cache / "hashes.json")["title"] == "dreamy"  # no hash known yet: never computed for a listing
    short = model_hash(checkpoint, cache / "hashes.json")  # what a load computes
    item = model_item(entry, cache / "hashes.json")
    assert item["title"] == f"dreamy [{short}]" and item["hash"] == short and item["sha256"].startswith(short)
    for text in (f"dreamy [{short}]", "dreamy", "dreamy.safetensors", short, item["sha256"]):
        assert find_model(manager, text) == "dreamy", text
    with pytest.raises(ModelNotFound, match="sd-models"):
        find_model(manager, "nightmare [0123456789]")
    assert manager.refreshed == 1  # rescanned once before giving up, as A1111 does
