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


def test_unet_cpu_clock_counts_each_forward_and_leaves_no_hook():
    import torch

    layer = torch.nn.Linear(256, 256)
    clock = bench_lora.UnetCpuClock(layer)
    x = torch.randn(64, 256)
    for _ in range(3):
        layer(x)
    calls = clock.take()
    assert len(calls) == 3 and all(seconds >= 0 for seconds in calls) and clock.take() == []
    clock.close()
    layer(x)
    assert clock.calls == [] and not layer._forward_hooks and not layer._forward_pre_hooks


def test_real_size_target_is_judged_on_cpu_time_when_measured():
    real = {"unet_params": 859_520_964, "size": 256, "threads": 1,
            "step_s": {"base": 2.0, "unfused": 2.4, "fused": 2.7},
            "unet_cpu_s": {"base": 5.0, "unfused": 5.3, "fused": 5.05}}
    text = "\n".join(bench_lora.real_size_report(real))
    wall_row, cpu_row = [line.strip() for line in text.splitlines() if line.strip().startswith(("step, wall", "UNet call"))]
    assert "not judged" in wall_row and "1.350x" in wall_row
    assert cpu_row.endswith("met") and "1.010x" in cpu_row
    slower = {**real, "unet_cpu_s": {"base": 5.0, "unfused": 5.3, "fused": 5.2}}
    assert "missed" in "\n".join(bench_lora.real_size_report(slower))
    on_gpu = {key: value for key, value in real.items() if key != "unet_cpu_s"}
    assert "missed" in "\n".join(bench_lora.real_size_report(on_gpu))
