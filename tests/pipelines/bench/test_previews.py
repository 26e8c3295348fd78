"""The core suite's live preview rows: cheap vs TAESD per call, through the real preview path."""
from __future__ import annotations

import torch

from pipelines.bench import previews
from pipelines.families import Family


def test_preview_rows_time_both_kinds_and_report_the_ratio(monkeypatch):
    monkeypatch.setattr(previews, "ROWS", (("tiny SD 1.5 size", Family.SD15, 64), ("tiny FLUX.1 size", Family.FLUX, 64)))
    data = previews.measure(torch.device("cpu"), quick=True)
    assert [row["decoder"] for row in data["rows"]] == ["TAESD", "TAEF1"]
    for row in data["rows"]:
        assert row["cheap_seconds"] > 0 and row["taesd_seconds"] > 0
        assert row["ratio"] == row["taesd_seconds"] / row["cheap_seconds"]
    lines = previews.report(data)
    assert "TAESD/cheap" in lines[0] and "tiny FLUX.1 size" in lines[0]
    assert "medians of 3 calls" in lines[1]
