"""`bench --suite lora` end to end on one tiny family (the suite runs all three)."""
from __future__ import annotations

import io
import json

from pipelines.bench import lora as bench_lora
from pipelines.bench import run_suite
from pipelines.bench.tiny_models import build_tiny_sd15


def test_lora_suite_reports_load_step_and_fusing(make_manager, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_lora, "BUILDERS", {"sd15": build_tiny_sd15})
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    assert run_suite("lora", make_manager(), tmp_path / "lora.json", quick=True) == 0
    text = out.getvalue()
    for expected in ("load cold", "load memo", "3 LoRAs unfused", "3 LoRAs fused", "switching between two LoRA sets", "bit-identical", "prompt encode: 150 tokens vs 75 tokens"):
        assert expected in text
    figures = json.loads((tmp_path / "lora.json").read_text())["sd15"]
    assert figures["load_cold_s"] > 0 and set(figures["step_s"]) == {"0", "1", "3"}
    assert set(figures["step_s_fused"]) == {"0", "1", "3"} and figures["switching"]["switching"]["total_s"] > 0
    assert figures["fused"]["bit_identical_restore"] and figures["fused"]["drift_restore"] == 0
    encode = figures["prompt_encode"]
    assert encode["tokens_short"] <= 75 < encode["tokens_long"] <= 150 and encode["chunks_long"] == 2
    assert encode["seconds_short"] > 0 and encode["seconds_long"] > 0 and encode["ratio"] > 0
