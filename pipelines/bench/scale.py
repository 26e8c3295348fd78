"""`python app.py bench --suite scale`: Likeness beyond one process (issue 18). The shared approximate cache:

(a) Lookup latency of the approximate cache on Milvus Lite vs the embedded faiss store, at 1k, 10k
    and 100k entries (768-d unit vectors, as SD 1.5 / FLUX.1 prompt vectors; one namespace and
    partition). Timed: `ApproximateCache.lookup` end to end with random queries (misses: the vector
    search with its namespace/partition filter, no latent read). Entries are bulk-loaded (Milvus:
    `insert_many` in batches, then a flush, waiting until the background compaction has indexed every
    row; faiss: straight into the
    in-memory index, no files: its search path is the same). Target: p99 < 5 ms at 100k.
(b) Hit rate of one Milvus Lite cache fed by two clients (alternating prompts) vs one client
    taking every prompt (target: equal), and two separate faiss caches for contrast (what a worker
    per GPU without a shared cache gets). The prompt stream: topics with near-duplicates (cosine
    0.80-0.99 to their topic) and unrelated prompts, seeded.

`sizes` (default 1k, 10k, 100k; `--quick`: 1k, 10k) bounds the run: loading 100k entries into
Milvus Lite takes minutes on 2 CPU cores. `server_uri` (`--milvus-uri http://host:19530`) adds a
Milvus server to (a): the same lookups through the same store, in collections of the bench's own
(`likeness_bench_d768`, dropped at the end), so a server that holds a real cache is left as it was.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.bench.system import print_suite_header
from pipelines.bench.tables import finish_suite, heading, median, seconds, table, verdict

DIM = 768
P99_TARGET_SECONDS = 0.005
PARTITION = "bench"
QUERIES = 400
BATCH = 5000
BENCH_COLLECTIONS = "likeness_bench_d"  # the server rows' collections: never the app's `likeness_approx_d...`


def say(text: str = "") -> None:
    print(text, flush=True)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


# -- (a) lookup latency ----------------------------------------------------------------------------------


def _faiss_cache(folder: Path):
    from pipelines.caches.approximate import ApproximateCache, ApproximateCacheConfig

    cache = ApproximateCache(folder, ApproximateCacheConfig(), maintains=False)
    cache.entries()  # opens the (empty) store
    return cache


def _load_faiss(cache, entries, vectors) -> None:
    """Straight into the opened store's memory (no embedding files): bench-only, the search path is unchanged."""
    from pipelines.caches.faiss_store import PartitionIndex

    store = cache.vectors
    key = ("", PARTITION)
    index = store._indexes.get(key)
    if index is None:
        index = store._indexes[key] = PartitionIndex(DIM, store.neighbours, store.search_depth)
    index.add_many([e.id for e in entries], vectors)
    for entry in entries:
        store._entries[entry.id] = entry
        store._embedding_files[entry.id] = f"e{entry.id:08d}.emb.safetensors"


def _milvus_cache(folder: Path):
    from pipelines.caches.approximate import ApproximateCache, ApproximateCacheConfig

    cache = ApproximateCache(folder / "latents", ApproximateCacheConfig(uri=str(folder / "bench.db")), maintains=False)
    cache.entries()
    if cache.unavailable:
        raise RuntimeError(cache.unavailable)
    cache.vectors.timeout = 600  # measure the latency, whatever it is (the app gives a lookup 10 s, then turns the cache off)
    return cache


def _load_milvus(cache, entries, vectors) -> float:
    """Insert, flush, then wait until Milvus Lite has indexed every row; returns the seconds that wait took.
    Milvus Lite 2.4 (Milvus' C++ engine) reports no row counts (always 0 of 0) and its flush returns after the
    segment is indexed, so there the wait is on describe_index's state and usually nil."""
    store = cache.vectors
    _insert_and_flush(store, entries, vectors)
    if not store.python_engine:
        return _wait_for_index_builds(store, "Milvus Lite 2.4",
                                      lambda index, total: index.get("state") == "Finished" and not index.get("pending_index_rows", 0))
    started = time.perf_counter()
    _wait_until_indexed(store)
    return time.perf_counter() - started


def _insert_and_flush(store, entries, vectors) -> None:
    for start in range(0, len(entries), BATCH):
        store.insert_many(entries[start:start + BATCH], vectors[start:start + BATCH], timeout=600)
    for name in store._collections:
        store.client.flush(name, timeout=600)


def _wait_for_index_builds(store, who: str, built, limit_seconds: float = 1800) -> float:
    """Poll describe_index of each collection until `built(index, rows in the collection)`; returns the seconds waited."""
    started = time.perf_counter()
    for name in store._collections:
        total = store.client.query(name, filter="", output_fields=["count(*)"], timeout=600)[0]["count(*)"]
        index_name = store.client.list_indexes(name, timeout=60)[0]
        while not built(index := store.client.describe_index(name, index_name, timeout=60), total):
            if time.perf_counter() - started > limit_seconds:
                raise RuntimeError(f"{who} had not indexed {total} rows after {limit_seconds:.0f} s: {index}")
            time.sleep(0.5)
    return time.perf_counter() - started


def _server_cache(folder: Path, uri: str):
    """A cache on a Milvus server, in the bench's own collections (emptied first: a run before may have
    been stopped)."""
    from pipelines.caches.approximate import ApproximateCache, ApproximateCacheConfig
    from pipelines.caches.milvus_store import MilvusStore

    store = MilvusStore(uri, collection_prefix=BENCH_COLLECTIONS, timeout=600)  # measure the latency, whatever it is
    store.open()
    store.drop_collections()
    cache = ApproximateCache(folder, ApproximateCacheConfig(uri=uri), vectors=store, maintains=False)
    cache.entries()
    if cache.unavailable:
        raise RuntimeError(cache.unavailable)
    return cache


def server_problem(uri: str) -> str | None:
    """Why `--milvus-uri` cannot be timed (None when the server answers): checked before any row is loaded."""
    from pipelines.caches.milvus_store import MilvusStore
    from pipelines.caches.vector_store import StoreUnavailable, uri_problem

    if uri.strip().endswith(".db") or not uri.strip():
        return f"--milvus-uri takes a Milvus server (http://host:19530), not {uri!r}: Milvus Lite has its own rows already"
    problem = uri_problem(uri)
    if problem:
        return problem
    store = MilvusStore(uri)
    try:
        store.open()
    except StoreUnavailable as error:
        return str(error)
    finally:
        store.close()
    return None


def _load_server(cache, entries, vectors) -> float:
    """Insert and flush, then wait until the server has built the HNSW index of every row (as a cache
    that has sat a while has it); returns the seconds that wait took."""
    _insert_and_flush(cache.vectors, entries, vectors)
    return _wait_for_index_builds(cache.vectors, "the Milvus server",
                                  lambda index, total: index.get("indexed_rows", 0) >= total and not index.get("pending_index_rows", 0))


def _lite_collections(store) -> list:
    """The engine's collections behind a Milvus Lite URI in this process ([] if this milvus-lite has no such internals)."""
    import os

    from milvus_lite.server_manager import server_manager_instance

    server = getattr(server_manager_instance, "_servers", {}).get(os.path.abspath(str(Path(store.uri).expanduser())))
    return list(getattr(server[1], "_collections", {}).values()) if server else []


def _wait_until_indexed(store, limit_seconds: float = 1800) -> None:
    """Time the lookup over indexed segments, as a cache that has sat a while has them.

    Milvus Lite 3.2 flushes each batch into a segment, then merges segments and builds their HNSW
    indexes in one background thread; until that is done, a search brute-forces every unindexed
    segment in numpy while the index build takes the cores (the bench timed that state once: p99
    4.5 s at 100k). Its describe_index cannot tell: it reports every row indexed at once. So the
    bench waits on the engine's own queue (bench-only use of Milvus Lite internals) and checks that
    every segment has its index."""
    collections = _lite_collections(store)
    if not collections or not all(hasattr(c, "_wait_for_bg") for c in collections):
        raise RuntimeError("this milvus-lite version does not expose its background index builds; the bench cannot "
                           "tell when the lookup is measured over indexed segments")
    deadline = time.monotonic() + limit_seconds
    for collection in collections:
        while True:
            collection._wait_for_bg(timeout=max(1.0, deadline - time.monotonic()))
            unindexed = [s for s in collection._segments_snapshot() if s.num_rows and "vector" not in s.indexes]
            if not unindexed:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Milvus Lite left {len(unindexed)} segments unindexed after {limit_seconds:.0f} s")
            collection._schedule_bg_maintenance()  # a merge finished after the last build was queued


def _entries(first_id: int, count: int, now: float):
    from pipelines.caches.vector_store import Entry, Item

    return [Entry(first_id + i, PARTITION, DIM, 50, now, 0.1, {25: Item(f"e{first_id + i:08d}.s025.safetensors", 65_536, 1, now, "")})
            for i in range(count)]


def time_lookups(cache, queries: np.ndarray) -> list[float]:
    for query in queries[:20]:  # warm-up
        cache.lookup(PARTITION, query, 50)
    times = []
    for query in queries:
        start = time.perf_counter()
        cache.lookup(PARTITION, query, 50)
        times.append(time.perf_counter() - start)
    return sorted(times)


def lookup_section(sizes: tuple[int, ...], workdir: Path, server_uri: str | None = None) -> dict:
    rng = np.random.default_rng(0)
    queries = unit(rng.standard_normal((QUERIES, DIM), dtype=np.float32))
    import milvus_lite

    stores = {"faiss": (_faiss_cache(workdir / "faiss"), _load_faiss),
              f"Milvus Lite {milvus_lite.__version__}": (_milvus_cache(workdir / "milvus"), _load_milvus)}
    if server_uri:
        stores["Milvus server"] = (_server_cache(workdir / "server", server_uri), _load_server)
    rows, loaded, now = [], 0, time.time()
    for size in sizes:
        vectors = unit(rng.standard_normal((size - loaded, DIM), dtype=np.float32))
        entries = _entries(loaded + 1, size - loaded, now)
        for name, (cache, load) in stores.items():
            start = time.perf_counter()
            indexing_seconds = load(cache, entries, vectors)
            load_seconds = time.perf_counter() - start
            times = time_lookups(cache, queries)
            row = {"store": name, "entries": size, "load_seconds": load_seconds, "indexing_seconds": indexing_seconds,
                   "median_seconds": median(times),
                   "p99_seconds": times[int(len(times) * 0.99) - 1], "misses": cache.misses, "off": cache.unavailable}
            if cache.unavailable:  # lookups after that returned at once: no latency to report
                row["median_seconds"] = row["p99_seconds"] = None
            rows.append(row)
            indexing = "" if indexing_seconds is None else f" (of which {indexing_seconds:.1f} s waiting for its background indexing)"
            say(f"  [a] {name}, {size:,} entries: loaded {size - loaded:,} in {load_seconds:.1f} s{indexing}; lookup median "
                f"{seconds(row['median_seconds'])}, p99 {seconds(row['p99_seconds'])}")
        loaded = size
    if server_uri:
        stores["Milvus server"][0].vectors.drop_collections()  # the bench's own: the server is left as it was
    for cache, _ in stores.values():
        if cache.vectors is not None:
            cache.vectors.close()
    return {"dim": DIM, "queries": QUERIES, "rows": rows, "server": server_uri}


def lookup_report(data: dict) -> list[str]:
    rows = []
    for row in data["rows"]:
        target = verdict(row["p99_seconds"] is not None and row["p99_seconds"] < P99_TARGET_SECONDS) if row["entries"] >= 100_000 else ""
        rows.append([row["store"], f"{row['entries']:,}", seconds(row["load_seconds"]), seconds(row["median_seconds"]),
                     seconds(row["p99_seconds"]), target])
    return [table(["store", "entries (768-d)", "bulk load", "lookup median", "lookup p99", "p99 < 5 ms at 100k"], rows, "llrrrr"),
            *[f"  ! {row['store']} at {row['entries']:,}: {row['off']}" for row in data["rows"] if row.get("off")],
            f"  {data['queries']} random queries per row (misses: the search and its filters, no latent read), after 20 warm-up lookups;",
            "  load = the entries added since the row above (Milvus: inserts of 5,000 rows, a flush, and the wait until Milvus Lite's",
            "  background merge and HNSW builds are done: lookups during those builds brute-force the unindexed segments, far slower);",
            "  Milvus Lite 3.2 is pure Python: besides the HNSW search, each search walks every row of the collection in Python",
            "  (newest version per id, deletions, the filter), so its lookup grows with the entries; a Milvus server does not,",
            "  nor Milvus Lite 2.4 (Milvus' C++ engine in a child process; IVF_FLAT, 128 lists, 16 probed: its local mode has no HNSW)",
            *([f"  Milvus server: {data['server']}, in the bench's own collections ({BENCH_COLLECTIONS}768, dropped at the end);",
               "  its load waits until the server reports every row in its HNSW index"] if data.get("server") else
              ["  a Milvus server adds its rows with --milvus-uri http://host:19530"])]


# -- (b) hit rate: one shared cache, two clients ----------------------------------------------------------


def prompt_stream(count: int, seed: int = 7) -> list[np.ndarray]:
    """Topics with near-duplicates (cosine 0.80-0.99 to the topic) and unrelated prompts, about 60/40."""
    rng = np.random.default_rng(seed)
    topics = unit(rng.standard_normal((max(count // 8, 4), DIM), dtype=np.float32))
    stream = []
    for _ in range(count):
        if rng.random() < 0.6:
            topic = topics[rng.integers(len(topics))]
            noise = unit(rng.standard_normal(DIM, dtype=np.float32))
            noise = unit(noise - noise.dot(topic) * topic)  # orthogonal to the topic
            cosine = rng.uniform(0.80, 0.99)
            stream.append(unit(cosine * topic + np.sqrt(1 - cosine**2) * noise))
        else:
            stream.append(unit(rng.standard_normal(DIM, dtype=np.float32)))
    return stream


def feed(clients: list, stream: list[np.ndarray]) -> dict:
    """Prompt i goes to client i mod len(clients): look up; on a miss, store (5 latents, as a 50-step run keeps)."""
    latents = {step: torch.full((1, 4, 8, 8), float(step)) for step in (5, 10, 15, 20, 25)}
    hits, steps = 0, 0
    for number, vector in enumerate(stream):
        cache = clients[number % len(clients)]
        hit = cache.lookup(PARTITION, vector, 50)
        if hit is None:
            cache.store(PARTITION, vector, 50, latents, 0.1)
        else:
            hits += 1
            steps += hit.step
    return {"prompts": len(stream), "hits": hits, "hit_rate": hits / len(stream), "steps_saved": steps,
            "off": [cache.unavailable for cache in clients if cache.unavailable]}


def hit_rate_section(count: int, workdir: Path) -> dict:
    from pipelines.caches.approximate import ApproximateCache, ApproximateCacheConfig

    stream = prompt_stream(count)
    figures = {}
    one = ApproximateCache(workdir / "one" / "latents", ApproximateCacheConfig(uri=str(workdir / "one" / "cache.db"), sweep_seconds=0))
    figures["one cache (Milvus Lite), one client"] = feed([one], stream)
    shared_uri = str(workdir / "shared" / "cache.db")
    a = ApproximateCache(workdir / "shared" / "latents", ApproximateCacheConfig(uri=shared_uri, sweep_seconds=0))
    b = ApproximateCache(workdir / "shared" / "latents", ApproximateCacheConfig(uri=shared_uri, sweep_seconds=0), maintains=False)
    figures["one cache (Milvus Lite), two clients"] = feed([a, b], stream)
    separate = [ApproximateCache(workdir / f"faiss-{n}", ApproximateCacheConfig()) for n in (1, 2)]
    figures["two separate faiss caches"] = feed(separate, stream)
    for cache in (one, a, b, *separate):
        if cache.vectors is not None:
            cache.vectors.close()
    for name, row in figures.items():
        say(f"  [b] {name}: {row['hits']} hits of {row['prompts']} ({row['hit_rate']:.1%})")
    return figures


def hit_rate_report(figures: dict) -> list[str]:
    one = figures["one cache (Milvus Lite), one client"]["hit_rate"]
    rows = [[name, row["prompts"], row["hits"], f"{row['hit_rate']:.1%}", row["steps_saved"],
             verdict(abs(row["hit_rate"] - one) < 1e-9) if "two clients" in name else ""] for name, row in figures.items()]
    lines = [table(["cache", "prompts", "hits", "hit rate", "steps saved (of 50 each)", "equal to one client"], rows, "lrrrrr"),
             "  synthetic prompt vectors: topics with near-duplicates (cosine 0.80-0.99) and unrelated prompts, about 60/40;",
             "  the two clients are two pymilvus connections to one Milvus Lite in this process (prompts alternate between them)"]
    lines += [f"  ! {problem}" for row in figures.values() for problem in row["off"]]
    return lines


# -- generation workers on Ray (pipelines/distributed) ---------------------------------------------------

DISPATCH_TARGET_SECONDS = 0.020


def _demo_job(seed: int, size: int, steps: int):
    from pipelines.catalog import DEMO_MODEL_NAME
    from pipelines.request import GenerationRequest

    return GenerationRequest(model=DEMO_MODEL_NAME, prompt="a red circle on a blue square", steps=steps, width=size,
                             height=size, seed=seed, save=False)


def _timed(generate, request) -> float:
    start = time.perf_counter()
    generate(request)
    return time.perf_counter() - start


def _throughput(generate, jobs: int, size: int, steps: int) -> float:
    """Jobs per minute with `jobs` submitted at once (one thread each, as browser tabs would)."""
    import concurrent.futures

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(jobs) as threads:
        list(threads.map(lambda seed: generate(_demo_job(seed, size, steps)), range(jobs)))
    return jobs * 60 / (time.perf_counter() - start)


def workers_section(manager, quick: bool = False) -> dict:
    """(c) Dispatch overhead of one Ray worker against the in-process manager (the same demo job, medians
    of a block each; the manager's own caches see repeats on both sides alike), and throughput
    with 1 and 2 CPU workers (a local Ray on loopback each time; 1 worker gets every core, 2 get half each)."""
    from pipelines.distributed.pool import PoolConfig, WorkerPool

    repeats, jobs = (6, 4) if quick else (15, 8)
    size, steps = 128, 4  # the overhead job: small, so the added milliseconds are not lost in its noise
    load_size, load_steps = (128, 10) if quick else (256, 20)
    figures: dict = {"overhead_job": f"{size} px, {steps} steps", "throughput_job": f"{load_size} px, {load_steps} steps",
                     "jobs": jobs}
    local = lambda request: manager.generate(request)  # noqa: E731
    # One torch thread on both sides, in blocks (not alternated): on a shared 2-core machine two OpenMP
    # threads per job swing a 4-step job between 0.15 s and 7 s, which would drown the milliseconds
    # measured here; alternating also let one side's spinning threads starve the other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local(_demo_job(0, size, steps))  # warm: the demo loaded
        figures["in_process_s"] = median([_timed(local, _demo_job(i, size, steps)) for i in range(repeats)])
    finally:
        torch.set_num_threads(threads)
    pool = WorkerPool(manager.config, PoolConfig(count=1, threads=1)).start()
    try:
        pool.generate(_demo_job(0, size, steps))
        figures["worker_s"] = median([_timed(pool.generate, _demo_job(i, size, steps)) for i in range(repeats)])
        handle = pool.handle(pool.names[0])
        figures["round_trip_s"] = median([_timed(lambda _: pool._ray.get(handle.ping.remote()), None) for _ in range(50)])
    finally:
        pool.shutdown()
    figures["added_s"] = figures["worker_s"] - figures["in_process_s"]
    figures["throughput_in_process"] = _throughput(local, jobs, load_size, load_steps)
    pool = WorkerPool(manager.config, PoolConfig(count=1)).start()
    try:
        pool.generate(_demo_job(0, size, steps))
        figures["throughput_1"] = _throughput(pool.generate, jobs, load_size, load_steps)
    finally:
        pool.shutdown()
    pool = WorkerPool(manager.config, PoolConfig(count=2)).start()
    try:
        pool.generate(_demo_job(0, size, steps))
        pool.generate(_demo_job(1, size, steps))  # the second worker is the least busy one: both warm
        time.sleep(1.0)
        figures["throughput_2"] = _throughput(pool.generate, jobs, load_size, load_steps)
    finally:
        pool.shutdown()
    figures["ratio_2_vs_1"] = figures["throughput_2"] / figures["throughput_1"]
    return figures


def workers_report(figures: dict) -> list[str]:
    added = figures["added_s"]
    overhead = table(["demo job (" + figures["overhead_job"] + ", 1 torch thread)", "median"], [
        ["in process", seconds(figures["in_process_s"])],
        ["Ray worker (1 CPU worker, same job)", seconds(figures["worker_s"])],
        ["one Ray call to an idle worker (ping, round trip)", seconds(figures["round_trip_s"])],
        ["added by dispatch (worker - in process)", f"{added * 1e3:+.1f} ms ({verdict(added <= DISPATCH_TARGET_SECONDS)}: target <= 20 ms)"],
    ], "lr")
    load = table([f"{figures['jobs']} jobs at once ({figures['throughput_job']})", "jobs/min"], [
        ["in process (one job at a time)", f"{figures['throughput_in_process']:.1f}"],
        ["1 CPU worker", f"{figures['throughput_1']:.1f}"],
        ["2 CPU workers", f"{figures['throughput_2']:.1f} ({figures['ratio_2_vs_1']:.2f} x 1 worker)"],
    ], "lr")
    return [overhead, "", load, "  2 CPU workers share the same cores as 1 (each gets half): the ratio shows what splitting "
                                "costs or gains on a CPU, not what a second GPU would add."]


# -- the suite -------------------------------------------------------------------------------------------


def _release_lite_servers(workdir: Path) -> None:
    """Stop the in-process Milvus Lite servers this suite started (only those: the app may hold its own)."""
    from milvus_lite.server_manager import server_manager_instance

    for path in workdir.rglob("*.db"):
        server_manager_instance.release_server(str(path))



def _workers_skip_reason(manager) -> str | None:
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return "Ray is not installed (pip install -r requirements-scale.txt)"
    if not hasattr(manager, "generate"):  # a stand-in manager (the suite's own tests of sections (a) and (b))
        return "no pipeline manager to compare against"
    return None


def run(manager, json_file: Path | None = None, quick: bool = False, sizes: tuple[int, ...] | None = None,
        server_uri: str | None = None) -> int:
    try:
        import pymilvus  # noqa: F401
    except ImportError:
        print("bench --suite scale needs pymilvus and milvus-lite: pip install -r requirements-scale.txt", file=sys.stderr)
        return 1
    problem = server_problem(server_uri) if server_uri is not None else None
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    sizes = sizes or ((1_000, 10_000) if quick else (1_000, 10_000, 100_000))
    figures: dict = {"mode": "quick" if quick else "full", "sizes": list(sizes)}
    print_suite_header(sys.stdout, f"Likeness bench --suite scale ({figures['mode']}): the shared approximate cache", manager.device)
    workdir = Path(tempfile.mkdtemp(prefix="likeness-bench-scale-"))
    try:
        figures["lookup"] = lookup_section(sizes, workdir / "lookup", server_uri)
        figures["hit_rate"] = hit_rate_section(120 if quick else 300, workdir / "hits")
        skip = _workers_skip_reason(manager)
        figures["workers"] = workers_section(manager, quick) if skip is None else {"skipped": skip}
    finally:
        _release_lite_servers(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
    say(heading("(a) Approximate-cache lookup: Milvus Lite" + (", a Milvus server" if server_uri else "") + " vs faiss"))
    for line in lookup_report(figures["lookup"]):
        say(line)
    say(heading("(b) Hit rate: one cache shared by two clients vs one client"))
    for line in hit_rate_report(figures["hit_rate"]):
        say(line)
    say(heading("(c) Generation workers on Ray: dispatch overhead and throughput"))
    skipped = figures["workers"].get("skipped")
    for line in [f"  skipped: {skipped}"] if skipped else workers_report(figures["workers"]):
        say(line)
    return finish_suite(figures, started, json_file, say)
