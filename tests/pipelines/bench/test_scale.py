"""`bench --suite scale` (the shared approximate cache part): a tiny run prints both tables and writes JSON."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.bench import scale

pytest.importorskip("pymilvus", reason="the scale suite needs requirements-scale.txt")
LITE = f"Milvus Lite {pytest.importorskip('milvus_lite').__version__}"  # the row names the engine: 3.x and 2.4 differ a lot


def test_a_tiny_scale_run_reports_lookup_and_shared_hit_rate(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(scale, "QUERIES", 40)
    out = tmp_path / "scale.json"
    assert scale.run(SimpleNamespace(device="cpu"), out, quick=True, sizes=(300,)) == 0
    text = capsys.readouterr().out
    assert "Approximate-cache lookup: Milvus Lite vs faiss" in text and "one cache (Milvus Lite), two clients" in text
    figures = json.loads(out.read_text())
    assert [(row["store"], row["entries"], row["misses"]) for row in figures["lookup"]["rows"]] == [("faiss", 300, 60), (LITE, 300, 60)]
    hits = figures["hit_rate"]
    one, two = hits["one cache (Milvus Lite), one client"], hits["one cache (Milvus Lite), two clients"]
    assert one["hits"] > 0 and two["hits"] == one["hits"], "a shared cache fed by two clients hits as one cache does"
    assert hits["two separate faiss caches"]["hits"] < one["hits"]
    assert not one["off"] and not two["off"]


def test_server_rows_time_a_milvus_server_in_collections_of_their_own(tmp_path, capsys, monkeypatch, lite_server):
    """`--milvus-uri` adds a server's rows, through the same store, and leaves the server's real cache alone."""
    from pipelines.caches.milvus_store import MilvusStore

    app_store = MilvusStore(lite_server.uri)  # the app's own collection on that server, with 3 entries
    app_store.open()
    app_store.insert_many(scale._entries(1, 3, 0.0), scale.unit(np.ones((3, scale.DIM), np.float32)))
    monkeypatch.setattr(scale, "QUERIES", 30)
    out = tmp_path / "scale.json"
    assert scale.run(SimpleNamespace(device="cpu"), out, quick=True, sizes=(200,), server_uri=lite_server.uri) == 0
    text = capsys.readouterr().out
    assert "Milvus Lite, a Milvus server vs faiss" in text and lite_server.uri in text
    rows = json.loads(out.read_text())["lookup"]["rows"]
    assert [(row["store"], row["entries"], row["misses"]) for row in rows] == [
        ("faiss", 200, 50), (LITE, 200, 50), ("Milvus server", 200, 50)]
    server = rows[2]
    assert server["median_seconds"] > 0 and server["p99_seconds"] >= server["median_seconds"] and not server["off"]
    names = app_store.client.list_collections()
    assert not any(name.startswith(scale.BENCH_COLLECTIONS) for name in names), "the bench drops its own collections"
    assert sorted(entry.id for entry in app_store.entries()) == [1, 2, 3], "the app's cache on that server is untouched"
    app_store.close()


@pytest.mark.parametrize("uri, says", [("./cache.db", "not './cache.db'"), ("ftp://host", "not a Milvus URI"),
                                       ("http://127.0.0.1:9", "cannot open the Milvus server at http://127.0.0.1:9")])
def test_a_milvus_uri_that_is_no_server_stops_before_any_row_with_one_line(tmp_path, capsys, uri, says):
    assert scale.run(SimpleNamespace(device="cpu"), tmp_path / "scale.json", quick=True, sizes=(100,), server_uri=uri) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and says in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "Approximate-cache lookup" not in captured.out and not (tmp_path / "scale.json").exists()
