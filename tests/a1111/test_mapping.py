"""A1111 sampler and scheduler names -> Likeness's samplers (no app needed)."""
from __future__ import annotations

import pytest

from pipelines.errors import InvalidRequest
from pipelines.families import Family
from ui.a1111.mapping import resolve_sampler


@pytest.mark.parametrize("sampler, scheduler, expected, warned", [
    ("DPM++ 2M", "Karras", "DPM++ 2M Karras", False),
    ("DPM++ 2M", "karras", "DPM++ 2M Karras", False),
    ("DPM++ 2M Karras", None, "DPM++ 2M Karras", False),  # A1111's old combined name
    ("DPM++ 2M Karras", "Karras", "DPM++ 2M Karras", False),
    ("k_euler_a", None, "Euler a", False),  # A1111's alias
    ("Euler", "Automatic", "Euler", False),
    ("Euler", "Karras", "Euler", True),  # no Karras Euler here: Automatic, with a warning
    ("UniPC", "Exponential", "UniPC", True),
])
def test_unet_samplers(sampler, scheduler, expected, warned):
    warnings: list[str] = []
    assert resolve_sampler(Family.SDXL, sampler, scheduler, warnings) == expected
    assert bool(warnings) == warned


def test_flux_runs_flow_euler_and_says_so():
    warnings: list[str] = []
    assert resolve_sampler(Family.FLUX, "Euler", "Simple", warnings) == "Flow Euler" and not warnings
    assert resolve_sampler(Family.FLUX, "Euler a", None, warnings) == "Flow Euler" and "replaced" in warnings[0]


@pytest.mark.parametrize("sampler, scheduler", [("DPM++ SDE", None), ("", None), ("Euler", "wobbly"), (3, None)])
def test_unknown_names_are_refused(sampler, scheduler):
    with pytest.raises(InvalidRequest):
        resolve_sampler(Family.SD15, sampler, scheduler, [])
