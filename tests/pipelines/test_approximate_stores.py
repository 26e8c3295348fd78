"""The approximate cache over both vector stores: the embedded faiss index and Milvus (real Milvus Lite).

One suite, run against each store: insert/search, K from similarity, LCBFU eviction, time-to-live,
namespaces never shared, a missing or altered latent file dropped (never served). Then Milvus
only: two clients of one Milvus Lite see each other's entries (in one process on one .db folder; across
processes through one `milvus-lite server`), and an unreachable Milvus turns the cache off with a
notice while generation goes on.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.caches.approximate import ApproximateCache, ApproximateCacheConfig, keep_steps
from pipelines.caches.vector_store import StoreUnavailable, open_store, uri_problem

pytest.importorskip("pymilvus", reason="the Milvus store needs requirements-scale.txt")
pytest.importorskip("milvus_lite", reason="the Milvus store needs requirements-scale.txt")

DIM = 8
ROOT = Path(__file__).resolve().parents[2]


def vector(similarity: float, axis: int = 0) -> np.ndarray:
    """A unit vector whose cosine similarity to e_axis is `similarity`."""
    v = np.zeros(DIM, dtype=np.float32)
    v[axis], v[(axis + 1) % DIM] = similarity, math.sqrt(max(0.0, 1 - similarity**2))
    return v


def latents(value: float, shape=(1, 4, 8, 8)) -> torch.Tensor:
    return torch.full(shape, float(value))


def kept(total: int = 50) -> dict[int, torch.Tensor]:
    return {step: latents(step) for step in keep_steps(total)}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def release_lite(uri: str) -> None:
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(uri)


@pytest.fixture(params=["faiss", "milvus-lite"])
def make_cache(request, tmp_path):
    """Factory for caches on one store (each call: a new client of the same store and latents folder)."""
    uri = str(tmp_path / "cache.db") if request.param == "milvus-lite" else ""
    made = []

    def make(clock=None, **config) -> ApproximateCache:
        cache = ApproximateCache(tmp_path / "latents", ApproximateCacheConfig(uri=uri, sweep_seconds=0, **config),
                                 clock=clock or Clock())
        made.append(cache)
        return cache

    make.kind = request.param
    yield make
    for cache in made:
        if cache._vectors is not None:
            cache._vectors.close()
    if uri:
        release_lite(uri)


def latent_path(cache: ApproximateCache, entry_id: int, step: int) -> Path:
    entry = next(e for e in cache.entries() if e.id == entry_id)
    return cache.folder / entry.items[step].file


# -- the shared suite ---------------------------------------------------------------------------------


def test_insert_and_search_picks_k_from_similarity(make_cache):
    cache = make_cache()
    entry = cache.store("p", vector(1.0), 50, kept(50))
    assert entry is not None and cache.unavailable is None
    for similarity, k in {0.99: 25, 0.92: 20, 0.88: 15, 0.8: 10, 0.7: 5}.items():
        hit = cache.lookup("p", vector(similarity), 50)
        assert hit is not None and hit.entry_id == entry and hit.step == k, similarity
        assert hit.similarity == pytest.approx(similarity, abs=1e-4)
        assert torch.equal(hit.latents, latents(k))
    assert cache.lookup("p", vector(0.5), 50) is None
    assert cache.lookup("p", vector(1.0), 40) is None, "another step count never resumes"
    assert cache.lookup("other", vector(1.0), 50) is None, "another partition never hits"
    assert cache.lookup("p", vector(1.0), 50, skip={entry}) is None, "a run never reuses what it stored itself"
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (5, 4, 5)


def test_nearest_of_several_and_uses_persist_for_a_new_client(make_cache):
    cache = make_cache()
    near = cache.store("p", vector(1.0, axis=0), 50, {25: latents(1)})
    far = cache.store("p", vector(1.0, axis=3), 50, {25: latents(2)})
    hit = cache.lookup("p", vector(0.99, axis=3), 50)
    assert hit.entry_id == far and torch.equal(hit.latents, latents(2))
    again = make_cache()  # a new client of the same store (a restart, or another worker)
    assert again.lookup("p", vector(0.99, axis=0), 50).entry_id == near
    uses = {e.id: e.items[25].uses for e in again.entries()}
    assert uses == {near: 2, far: 2}, "stored (1) + one hit each, written to the store"


def test_lcbfu_evicts_the_least_beneficial_and_least_used_first(make_cache):
    clock = Clock()
    cache = make_cache(clock)
    first = cache.store("p", vector(1.0), 50, {5: latents(5), 25: latents(25)})
    clock.now += 1
    second = cache.store("p", vector(-1.0), 50, {5: latents(5), 25: latents(25)})
    assert cache.eviction_order() == [(first, 5), (second, 5), (first, 25), (second, 25)]
    for _ in range(5):  # first's K=5 item used five more times: 5 x 6 = 30 > 25 x 1
        assert cache.lookup("p", vector(0.7), 50).entry_id == first
    assert cache.eviction_order() == [(second, 5), (first, 25), (second, 25), (first, 5)]
    evicted = latent_path(cache, second, 5)
    item_bytes = evicted.stat().st_size
    budget = make_cache(clock, max_bytes=cache.stats().bytes - item_bytes + 1)
    third = budget.store("p", vector(1.0, axis=5), 50, {25: latents(7)})
    assert third is not None
    left = set(budget.eviction_order())
    assert (second, 5) not in left and (first, 5) in left and (third, 25) in left
    assert not evicted.exists(), "an evicted item's latent file is deleted"
    assert budget.stats().bytes <= budget.config.max_bytes


def test_an_entry_larger_than_the_budget_is_not_kept(make_cache):
    cache = make_cache(max_bytes=1000)
    assert cache.store("p", vector(1.0), 50, {25: latents(1, (1, 4, 64, 64))}) is None
    assert cache.stats().entries == 0
    assert not list(cache.folder.glob("e*.s*.safetensors"))


def test_ttl_expiry(make_cache):
    clock = Clock()
    cache = make_cache(clock, ttl_seconds=60)
    entry = cache.store("p", vector(1.0), 50, kept())
    files = [cache.folder / item.file for item in cache.entries()[0].items.values()]
    clock.now += 59
    assert cache.lookup("p", vector(1.0), 50).entry_id == entry
    clock.now += 2
    assert cache.lookup("p", vector(1.0), 50) is None
    assert cache.stats().entries == 0
    assert not any(path.exists() for path in files)


def test_namespaces_are_never_shared(make_cache):
    cache = make_cache()
    alice = cache.store("p", vector(1.0), 50, kept(), namespace="alice")
    assert cache.lookup("p", vector(1.0), 50, namespace="bob") is None
    assert cache.lookup("p", vector(1.0), 50) is None, "the default namespace is a namespace too"
    assert cache.lookup("p", vector(1.0), 50, namespace="alice").entry_id == alice
    bob = cache.store("p", vector(1.0), 50, {25: latents(9)}, namespace="bob")
    assert cache.lookup("p", vector(1.0), 50, namespace="bob").entry_id == bob
    assert cache.lookup("p", vector(1.0), 50, namespace="alice").entry_id == alice
    stored = {e.namespace for e in cache.entries()}
    assert "alice" not in stored and "bob" not in stored and len(stored) == 2, "names (or API keys) are stored hashed"


def test_a_missing_latent_file_is_dropped_not_served(make_cache):
    cache = make_cache()
    entry = cache.store("p", vector(1.0), 50, {10: latents(10), 25: latents(25)})
    latent_path(cache, entry, 25).unlink()
    assert cache.lookup("p", vector(1.0), 50) is None, "the item whose file is gone is not served"
    assert [sorted(e.items) for e in cache.entries()] == [[10]]
    hit = cache.lookup("p", vector(1.0), 50)
    assert hit.step == 10 and torch.equal(hit.latents, latents(10))
    latent_path(cache, entry, 10).unlink()
    assert cache.lookup("p", vector(1.0), 50) is None
    assert cache.entries() == [], "the entry goes with its last item"


def test_an_altered_latent_file_is_dropped_not_served(make_cache):
    cache = make_cache()
    entry = cache.store("p", vector(1.0), 50, {25: latents(25)})
    path = latent_path(cache, entry, 25)
    other = cache.folder / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"latents": latents(99)}, str(other))  # a valid file of the same size, other values
    assert other.stat().st_size == path.stat().st_size
    os.replace(other, path)
    assert cache.lookup("p", vector(1.0), 50) is None, "the hash does not match: never served"
    assert cache.entries() == [] and not path.exists()


def test_clear(make_cache):
    cache = make_cache()
    cache.store("p", vector(1.0), 50, kept(), namespace="alice")
    cache.store("q", vector(1.0), 50, kept())
    cache.clear()
    assert cache.stats().entries == 0 and cache.lookup("q", vector(1.0), 50) is None
    assert not list(cache.folder.glob("e*.s*.safetensors"))


# -- Milvus only -------------------------------------------------------------------------------------


def test_two_clients_on_one_milvus_lite_file_see_each_other(tmp_path):
    uri, folder = str(tmp_path / "shared.db"), tmp_path / "latents"
    config = ApproximateCacheConfig(uri=uri, sweep_seconds=0)
    a = ApproximateCache(folder, config)
    b = ApproximateCache(folder, config, maintains=False)  # a worker: looks up and stores; `a` evicts
    try:
        from_a = a.store("p", vector(1.0), 50, kept())
        hit = b.lookup("p", vector(0.99), 50)
        assert hit is not None and hit.entry_id == from_a and hit.step == 25
        from_b = b.store("p", vector(1.0, axis=4), 50, {25: latents(4)})
        assert a.lookup("p", vector(0.99, axis=4), 50).entry_id == from_b
        assert {e.id: e.items[25].uses for e in a.entries()} == {from_a: 2, from_b: 2}
        assert a.vectors is not b.vectors and a.vectors.client is not b.vectors.client, "two clients"
    finally:
        a.vectors.close(), b.vectors.close()
        release_lite(uri)


def test_the_index_and_the_counter_writes_suit_the_milvus_lite_engine(tmp_path):
    """Milvus Lite 3 (and a server) index with HNSW and update counters in place; Milvus Lite 2.4's local mode
    has no HNSW (IVF_FLAT there) and no partial upsert (whole rows). The suite above runs on whichever is installed;
    the test command runs it on both."""
    from pipelines.caches.milvus_store import lite_engine

    uri = str(tmp_path / "engine.db")
    cache = ApproximateCache(tmp_path / "latents", ApproximateCacheConfig(uri=uri, sweep_seconds=0))
    try:
        first = cache.store("p", vector(1.0), 50, kept())
        assert cache.lookup("p", vector(0.99), 50).entry_id == first
        store = cache.vectors
        (name,) = store._collections
        index = store.client.describe_index(name, store.client.list_indexes(name)[0])
        python_engine = lite_engine() >= 3
        assert index["index_type"] == ("HNSW" if python_engine else "IVF_FLAT")
        assert store.partial_updates is python_engine
        assert cache.entries()[0].items[25].uses == 2, "the store and the hit counted, on either engine"
    finally:
        cache.vectors.close()
        release_lite(uri)


def test_a_server_without_partial_upsert_gets_whole_rows_and_counts_every_use(tmp_path):
    """Milvus 2.3-2.5 refuse an upsert without the vector (checked by hand on a Milvus 2.3.5 server: "float
    vector field 'vector' is illegal ... got nil"); the store then reads the row back and writes it whole."""
    uri = str(tmp_path / "old-server.db")
    cache = ApproximateCache(tmp_path / "latents", ApproximateCacheConfig(uri=uri, sweep_seconds=0))
    try:
        first = cache.store("p", vector(1.0), 50, kept())
        store = cache.vectors
        real_upsert, refused = store.client.upsert, []

        def upsert_as_before_2_6(collection, rows, partial_update=False, **options):
            if partial_update:
                refused.append(rows[0]["id"])
                raise ValueError("float vector field 'vector' is illegal, array type mismatch")
            assert all("vector" in row for row in rows), "a whole row"
            return real_upsert(collection, rows, **options)

        store.client.upsert = upsert_as_before_2_6
        store.partial_updates = True  # as a server is asked first (a Milvus Lite 2.4 file starts with whole rows)
        for similarity in (0.99, 0.98):
            hit = cache.lookup("p", vector(similarity), 50)
            assert hit is not None and hit.entry_id == first and not cache.unavailable
        assert refused == [first] and store.partial_updates is False, "asked once, then whole rows"
        (entry,) = cache.entries()
        assert entry.items[25].uses == 3, "the store and both hits counted"
        assert cache.lookup("p", vector(0.99), 50).entry_id == first, "the vector survived the rewrite"
    finally:
        cache.vectors.close()
        release_lite(uri)


def slow_listing(uri: str, listing_may_go: threading.Event):
    """A Milvus store whose full listing, off the main thread (the cache's background sweep), waits for the event."""
    from pipelines.caches.milvus_store import MilvusStore

    class SlowListing(MilvusStore):
        def entries(self):
            if threading.current_thread() is not threading.main_thread():
                listing_may_go.wait(60)
            return super().entries()

    return SlowListing(uri)


def test_a_shared_store_sweeps_in_the_background_and_lookups_do_not_wait_for_it(tmp_path):
    """Listing every entry scans the collection (about 15 s at 100k entries in Milvus Lite): the sweep
    (expiry, eviction) lists in a thread of its own, and lookups and stores go on meanwhile."""
    listing_may_go = threading.Event()

    uri, clock = str(tmp_path / "cache.db"), Clock()
    cache = ApproximateCache(tmp_path / "latents", ApproximateCacheConfig(uri=uri, sweep_seconds=30, ttl_seconds=60),
                             clock=clock, vectors=slow_listing(uri, listing_may_go))
    try:
        entry = cache.store("p", vector(1.0), 50, kept())  # opening the cache started a sweep: its listing is held
        files = [cache.folder / item.file for item in cache.vectors.entries()[0].items.values()]
        assert cache.lookup("p", vector(0.99), 50).entry_id == entry
        clock.now += 61
        assert cache.lookup("p", vector(1.0), 50) is None, "expired: never served, swept or not"
        assert cache._sweeper.is_alive() and not listing_may_go.is_set(), "the lookups did not wait for the listing"
        assert all(path.exists() for path in files)
        listing_may_go.set()
        cache.wait_for_sweep(60)
        assert not cache._sweeper.is_alive() and cache.unavailable is None
        assert cache.vectors.entries() == [] and not any(path.exists() for path in files), "the sweep expired the entry"
    finally:
        listing_may_go.set()
        cache.wait_for_sweep(60)
        cache.vectors.close()
        release_lite(uri)


def test_a_shared_store_answers_stats_from_its_last_listing_while_it_lists_again(tmp_path):
    """The Caches panel (stats) and eviction_order hold the lock every lookup needs: past
    `sweep_seconds` they answer from the last listing and list again in the background."""
    listing_may_go = threading.Event()

    uri = str(tmp_path / "cache.db")
    cache = ApproximateCache(tmp_path / "latents", ApproximateCacheConfig(uri=uri, sweep_seconds=0.05),
                             vectors=slow_listing(uri, listing_may_go), maintains=False)
    try:
        first = cache.store("p", vector(1.0), 50, {25: latents(1)})
        assert cache.stats().entries == 1, "a process that never listed lists once, at once"
        second = cache.store("p", vector(1.0, axis=3), 50, {25: latents(2)})
        time.sleep(0.1)
        assert cache.stats().entries == 1 and [e for e, _ in cache.eviction_order()] == [first], "the last listing, not a wait"
        assert cache._sweeper.is_alive(), "listing again, in the background"
        assert cache.lookup("p", vector(0.99, axis=3), 50).entry_id == second, "lookups go on meanwhile"
        listing_may_go.set()
        cache.wait_for_sweep(60)
        assert cache.stats().entries == 2 and {e for e, _ in cache.eviction_order()} == {first, second}
    finally:
        listing_may_go.set()
        cache.wait_for_sweep(60)
        cache.vectors.close()
        release_lite(uri)


def test_a_second_process_on_one_milvus_lite_file_gets_a_clear_notice(tmp_path):
    uri = str(tmp_path / "held.db")
    cache = ApproximateCache(tmp_path / "latents", ApproximateCacheConfig(uri=uri))
    cache.store("p", vector(1.0), 50, kept())
    try:
        child = run_child(f"""
            from pipelines.caches.approximate import ApproximateCache, ApproximateCacheConfig
            cache = ApproximateCache({str(tmp_path / 'latents')!r}, ApproximateCacheConfig(uri={uri!r}))
            print("LOOKUP", cache.lookup("p", [1.0] + [0.0] * 7, 50))
            print("NOTICE", cache.unavailable)
        """)
        assert "LOOKUP None" in child
        assert "one process" in child and "milvus-lite server" in child
    finally:
        cache.vectors.close()
        release_lite(uri)


def run_child(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_two_processes_share_one_milvus_lite_server(tmp_path, lite_server):
    folder = tmp_path / "latents"
    config = ApproximateCacheConfig(uri=lite_server.uri, sweep_seconds=0)
    here = ApproximateCache(folder, config)
    mine = here.store("p", vector(1.0), 50, kept())
    child = run_child(f"""
        import torch
        from pipelines.caches.approximate import ApproximateCache, ApproximateCacheConfig
        cache = ApproximateCache({str(folder)!r}, ApproximateCacheConfig(uri={lite_server.uri!r}), maintains=False)
        hit = cache.lookup("p", [0.99, 0.141] + [0.0] * 6, 50)
        print("HIT", hit.entry_id, hit.step)
        print("STORED", cache.store("p", [0.0] * 5 + [1.0, 0.0, 0.0], 50, {{25: torch.full((1, 4, 8, 8), 5.0)}}))
    """)
    assert f"HIT {mine} 25" in child
    theirs = int(child.split("STORED ")[1].split()[0])
    hit = here.lookup("p", vector(0.99, axis=5), 50)
    assert hit.entry_id == theirs and torch.equal(hit.latents, latents(5))
    here.vectors.close()


def test_milvus_going_away_mid_run_turns_the_cache_off(tmp_path, lite_server, caplog):
    cache = ApproximateCache(tmp_path / "latents", ApproximateCacheConfig(uri=lite_server.uri, sweep_seconds=0))
    cache.store("p", vector(1.0), 50, kept())
    assert cache.lookup("p", vector(1.0), 50) is not None
    lite_server.kill()
    lite_server.wait()
    assert cache.lookup("p", vector(1.0), 50) is None
    assert cache.unavailable and "Milvus server" in cache.unavailable
    assert cache.store("p", vector(1.0), 50, kept()) is None
    assert cache.stats().entries == 0
    assert "approximate cache off for this run" in caplog.text


@pytest.mark.parametrize("uri", ["http://127.0.0.1:1", "{tmp}/a-file/cache.db"])
def test_an_unreachable_milvus_turns_the_cache_off_with_a_notice(tmp_path, uri):
    (tmp_path / "a-file").write_text("not a folder")
    cache = ApproximateCache(tmp_path / "latents", ApproximateCacheConfig(uri=uri.format(tmp=tmp_path)))
    assert cache.lookup("p", vector(1.0), 50) is None
    assert cache.store("p", vector(1.0), 50, kept()) is None
    assert cache.unavailable and ("Milvus" in cache.unavailable)
    assert cache.stats().entries == 0 and cache.entries() == []


def test_a_bad_uri_and_a_missing_pymilvus_are_clear_messages(tmp_path, monkeypatch):
    assert uri_problem("") is None and uri_problem("./cache.db") is None and uri_problem("http://h:19530") is None
    assert "not a Milvus URI" in uri_problem("ftp://x")
    with pytest.raises(StoreUnavailable, match="not a Milvus URI"):
        open_store("mysql://x", tmp_path, ApproximateCacheConfig())
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    cache = ApproximateCache(tmp_path / "latents", ApproximateCacheConfig(uri=str(tmp_path / "c.db")))
    assert cache.lookup("p", vector(1.0), 50) is None
    assert "pip install -r requirements-scale.txt" in cache.unavailable


def test_the_faiss_default_never_imports_pymilvus(tmp_path):
    out = run_child(f"""
        import sys
        from pipelines.caches.approximate import ApproximateCache
        cache = ApproximateCache({str(tmp_path)!r})
        cache.store("p", [1.0, 0.0, 0.0], 10, {{2: __import__("torch").zeros(1, 4, 8, 8)}})
        print("PYMILVUS", "pymilvus" in sys.modules)
    """)
    assert "PYMILVUS False" in out


def test_generation_goes_on_when_milvus_is_unreachable(make_manager, shared_models_dir, tmp_path):
    from tests.tiny_models import tiny_request

    manager = make_manager(shared_models_dir, cache_dir=tmp_path / "cache")
    # What the manager builds from `approx_cache_uri` (set here directly: the field is the manager's).
    manager._approximate_cache = ApproximateCache(tmp_path / "cache" / "approximate", ApproximateCacheConfig(uri="http://127.0.0.1:1"))
    result = manager.generate(tiny_request("sd15", steps=4, seed=1, save=False, approximate_cache=True))
    assert len(result.images) == 1
    assert result.cache_notes["approx cache"].startswith("off for this run (the cache store is unreachable")


def test_the_caches_tab_shows_why_the_cache_is_off(tmp_path):
    from types import SimpleNamespace

    from ui.caches_tab import rows

    cache = ApproximateCache(tmp_path / "latents", ApproximateCacheConfig(uri="http://127.0.0.1:1"))
    cache.lookup("p", vector(1.0), 50)
    [row] = rows(SimpleNamespace(caches=lambda: [cache]))
    assert row[0] == "approximate latents" and row[2].startswith("off for this run: ") and "127.0.0.1:1" in row[2]


def test_a_latents_folder_that_is_not_writable_turns_the_cache_off(tmp_path, monkeypatch):
    import pipelines.caches.approximate as approximate

    monkeypatch.setattr(approximate.os, "access", lambda path, mode: False)  # as root, a read-only folder is writable
    cache = ApproximateCache(tmp_path / "shared-latents", ApproximateCacheConfig(uri=str(tmp_path / "c.db")))
    assert cache.store("p", vector(1.0), 50, kept()) is None and cache.lookup("p", vector(1.0), 50) is None
    assert "is not writable" in cache.unavailable
