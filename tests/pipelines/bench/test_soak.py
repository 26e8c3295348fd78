"""`bench --suite soak`: the plan's mix, and a tiny run through run_suite (table, JSON, error count)."""
from __future__ import annotations

import json

from pipelines.bench import run_suite, soak
from pipelines.catalog import DEMO_MODEL_NAME
from pipelines.manager import ManagerConfig, PipelineManager


def test_the_plan_mixes_swaps_caches_and_exact_repeats():
    runs = soak.plan(soak.GENERATIONS, (DEMO_MODEL_NAME, soak.SECOND_MODEL))
    assert len(runs) == 200 and [r.index for r in runs] == list(range(200))
    swaps = sum(a.model != b.model for a, b in zip(runs, runs[1:]))
    assert swaps == 200 // soak.SWAP_EVERY - 1
    assert 80 <= sum(r.deepcache for r in runs) <= 120 and 40 <= sum(r.approximate for r in runs) <= 80
    repeats = [r for r in runs if r.repeat]
    assert len(repeats) >= 40
    for r in repeats:  # a repeat is the previous request exactly, on the same model
        before = runs[r.index - 1]
        assert soak.request_for(r) == soak.request_for(before)
    assert len({r.seed for r in runs if not r.repeat}) == len([r for r in runs if not r.repeat])


def test_a_tiny_soak_through_run_suite_prints_the_table_and_counts_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(soak, "QUICK_GENERATIONS", 8)
    real_generate = PipelineManager.generate

    def generate(self, request, *args, **kwargs):
        if request.seed == 1004:
            raise RuntimeError("injected failure")
        return real_generate(self, request, *args, **kwargs)

    monkeypatch.setattr(PipelineManager, "generate", generate)
    manager = PipelineManager(ManagerConfig(tmp_path / "models", tmp_path / "outputs", tmp_path / "cache", device="cpu",
                                            include_hf_cache=False))
    json_file = tmp_path / "soak.json"
    assert run_suite("soak", manager, json_file, quick=True) == 0
    text = capsys.readouterr().out
    for expected in ("--suite soak (quick, 8 generations)", "model swaps", "exact-repeat hits", "RSS growth", "GPU allocator growth",
                     "Targets: FAIL", "run 4 (demo"):
        assert expected in text, expected
    figures = json.loads(json_file.read_text())
    assert figures["suite"] == "soak" and figures["generations"] == 8 and figures["warmup"] == 2 and figures["measured"] == 6
    assert figures["errors"] == 1 and "injected failure" in figures["error_messages"][0]
    assert figures["swaps"] == 1 and figures["loads_from_disk"] == 2
    assert figures["exact_hits"] == 2 and figures["deepcache_runs"] == 2 and figures["saved"] >= 2
    assert figures["rss_start"] > 0 and figures["rss_end"] > 0 and isinstance(figures["rss_growth_fraction"], float)
    assert isinstance(figures["rss_growth_second_half_fraction"], float) and figures["torch_threads"] == 1
    assert figures["gpu_allocated_start"] is None and figures["passed"] is False
    assert not (tmp_path / "outputs").exists(), "the soak writes into its own folder, which it removes"
