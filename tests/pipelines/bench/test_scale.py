"""`bench --suite scale` (the shared approximate cache part): a tiny run prints both tables and writes JSON."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from pipelines.bench import scale

pytest.importorskip("pymilvus", reason="the scale suite needs requirements-scale.txt")


def test_a_tiny_scale_run_reports_lookup_and_shared_hit_rate(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(scale, "QUERIES", 40)
    out = tmp_path / "scale.json"
    assert scale.run(SimpleNamespace(device="cpu"), out, quick=True, sizes=(300,)) == 0
    text = capsys.readouterr().out
    assert "Approximate-cache lookup: Milvus Lite vs faiss" in text and "one cache (Milvus Lite), two clients" in text
    figures = json.loads(out.read_text())
    assert [(row["store"], row["entries"], row["misses"]) for row in figures["lookup"]["rows"]] == [("faiss", 300, 60), ("Milvus Lite", 300, 60)]
    hits = figures["hit_rate"]
    one, two = hits["one cache (Milvus Lite), one client"], hits["one cache (Milvus Lite), two clients"]
    assert one["hits"] > 0 and two["hits"] == one["hits"], "a shared cache fed by two clients hits as one cache does"
    assert hits["two separate faiss caches"]["hits"] < one["hits"]
    assert not one["off"] and not two["off"]
