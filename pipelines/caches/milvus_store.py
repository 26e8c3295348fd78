"""The approximate cache's vectors and counters in Milvus (pymilvus `MilvusClient`), shared by every client.

- URI `./cache.db` (any path ending in `.db`): Milvus Lite, in-process, data in that folder. Milvus
  Lite locks its folder: one process at a time (a second process gets a clear message). Several
  clients in one process share it. For several processes or machines, run a server
  (`milvus-lite server --data-dir DIR --port 19530`, or Milvus itself) and use `http://host:19530`.
- One collection per embedding size (`likeness_approx_d<dim>`: SD 1.5 and FLUX.1 prompt vectors
  are 768 wide, SDXL's 1280), created on first insert: `id` (random 63-bit), `vector` (HNSW, inner
  product on unit vectors = cosine similarity), `namespace` and `partition` (VARCHAR; every search
  filters on both, so nothing crosses namespaces or partitions), `created`, and `meta` (JSON: steps,
  seconds per step, the items with their file, size, hash, uses and last use).
- Counters are written with a partial upsert of `meta` (Milvus 2.6 and later, Milvus Lite); a server
  that refuses one (2.3-2.5 want every field) gets the whole row read back and written again. Two clients
  counting a use of the same entry at the same moment may count it once (Milvus has no atomic increment);
  eviction order is approximate in that case, nothing else.
- Every call has a timeout; any failure is raised as `StoreUnavailable` (the cache turns itself off).
- Milvus Lite comes in two engines: 3.x (the pinned one) is written in Python: it has a `milvus-lite server`
  for several processes, but every search walks all rows of the collection in Python (about 75 ms at 100k
  entries, `bench --suite scale`). 2.4.x runs Milvus' own C++ engine in a child process (about 3 ms at 100k)
  but has no server command, and its local mode offers no HNSW: IVF_FLAT there. Either works here; the
  store asks the installed one (`lite_engine`).

pymilvus is imported here only, when a Milvus URI is configured; without it the message names the
requirements file to install.
"""
from __future__ import annotations

import hashlib
import logging
import re
import secrets
from pathlib import Path

import numpy as np

from pipelines.caches.vector_store import Entry, Item, StoreUnavailable, VectorStore

COLLECTION_PREFIX = "likeness_approx_d"
CALL_TIMEOUT_S = 10.0  # lookups: a generation waits on them
WRITE_TIMEOUT_S = 60.0  # inserts, flushes: Milvus Lite can be slow while it compacts in the background
LIST_TIMEOUT_S = 300.0  # listing every entry (the cache's background sweep): Milvus Lite takes ~15 s per 100k entries
LITE_FLUSH_EVERY = 64  # Milvus Lite searches unflushed rows by brute force in Python: keep that part small
INSTALL_HINT = "pip install -r requirements-scale.txt"


def _pymilvus():
    try:
        import pymilvus
    except ImportError:
        raise StoreUnavailable(f"a Milvus URI is set for the approximate cache, but pymilvus is not installed ({INSTALL_HINT})") from None
    # pymilvus logs every failed call at ERROR with a traceback; the cache reports failures itself, once.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    logging.getLogger("milvus_lite").setLevel(logging.CRITICAL)
    return pymilvus


# Milvus Lite 2.4's local mode indexes FLAT, IVF_FLAT or AUTOINDEX only. 128 lists, 16 probed: an eighth of a
# segment's vectors compared per search (high recall; 100k x 768 entries looked up in about 3 ms).
IVF_LISTS = 128
IVF_PROBES = 16


def lite_engine() -> int:
    """The installed Milvus Lite's major version: 3 (Python engine) or 2 (C++ engine); 0 if none is installed."""
    try:
        import milvus_lite
    except ImportError:
        return 0
    return int(str(getattr(milvus_lite, "__version__", "3")).split(".")[0] or 3)


def _literal(text: str) -> str:
    """A partition or namespace as a filter literal: plain names as they are, anything else hashed, so a
    filter expression never needs escaping (Milvus Lite has no filter templates)."""
    if re.fullmatch(r"[A-Za-z0-9_.:-]{0,100}", text):
        return text
    return "h-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def _meta(entry: Entry) -> dict:
    return {"total_steps": entry.total_steps, "step_seconds": entry.step_seconds, "dim": entry.dim,
            "items": {str(step): item.__dict__ for step, item in entry.items.items()}}


def _entry(row: dict) -> Entry:
    meta = row["meta"]
    items = {int(step): Item(**item) for step, item in meta["items"].items()}
    return Entry(int(row["id"]), row["partition"], int(meta["dim"]), int(meta["total_steps"]), float(row["created"]),
                 float(meta["step_seconds"]), items, row["namespace"])


class MilvusStore(VectorStore):
    """See the module docstring."""

    shared = True
    sweep_seconds = 30.0  # listing every entry is a scan of the collection: eviction and expiry run at most this often, in the background

    def __init__(self, uri: str, neighbours: int = 32, search_depth: int = 32, timeout: float = CALL_TIMEOUT_S,
                 collection_prefix: str = COLLECTION_PREFIX):
        self.uri = uri
        # Collections are named prefix + embedding size: another prefix keeps a benchmark's rows apart
        # from a shared server's real cache.
        self.prefix = collection_prefix
        self.lite = uri.endswith(".db")
        # Milvus Lite 3.x's own ways (no query limit, unflushed rows searched in Python); a 2.4 file and
        # every server go the server's ways.
        self.python_engine = self.lite and lite_engine() >= 3
        self.neighbours = neighbours
        self.search_depth = search_depth
        self.timeout = timeout
        self.client = None
        self._collections: set[str] = set()
        self._unflushed: dict[str, int] = {}
        # Counters are written with a partial upsert until the server refuses one; Milvus Lite 2.4 (Milvus 2.4's
        # engine) has none: a partial row is refused there ("Lost field vector").
        self.partial_updates = not self.ivf

    @property
    def ivf(self) -> bool:
        return self.lite and not self.python_engine  # HNSW is not in Milvus Lite 2.4's local mode

    def describe(self) -> str:
        return f"Milvus Lite in {self.uri}" if self.lite else f"the Milvus server at {self.uri}"

    def _call(self, what: str, function, *args, timeout: float | None = None, **kwargs):
        """One pymilvus call; every failure becomes StoreUnavailable naming the store and the call."""
        try:
            return function(*args, timeout=timeout or self.timeout, **kwargs)
        except StoreUnavailable:
            raise
        except Exception as error:  # noqa: BLE001 - pymilvus/grpc raise many types; all mean "cannot use it now"
            raise StoreUnavailable(f"{self.describe()} failed ({what}): {getattr(error, 'message', None) or error}") from error

    def open(self) -> list[str]:
        pymilvus = _pymilvus()
        if self.lite:
            # Milvus Lite's in-process gRPC server logs calls it does not implement (pymilvus asks for a
            # timestamp when it creates an index, and copes without): noise in our log.
            logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
            try:
                Path(self.uri).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreUnavailable(f"cannot open {self.describe()}: its folder cannot be made ({error.strerror or error})") from error
        try:
            options = {}
            if self.lite:  # the in-process server refuses pymilvus' default 10 s keepalive pings ("too_many_pings")
                options["grpc_options"] = {"grpc.keepalive_time_ms": 300_000, "grpc.keepalive_permit_without_calls": False}
            self.client = pymilvus.MilvusClient(str(Path(self.uri).expanduser()) if self.lite else self.uri, timeout=self.timeout, **options)
        except Exception as error:  # noqa: BLE001
            detail = getattr(error, "message", None) or str(error)
            if self.lite:
                server = "`milvus-lite server --data-dir DIR --port 19530`" + ("" if self.python_engine else
                                                                                 " (Milvus Lite 3; 2.4 has none) or a Milvus server")
                detail += (" (Milvus Lite lets one process open a .db folder at a time: for several processes run "
                           f"{server} and use http://127.0.0.1:19530)")
            raise StoreUnavailable(f"cannot open {self.describe()}: {detail}") from error
        for name in self._call("list collections", self.client.list_collections):
            if name.startswith(self.prefix):
                self._call("load", self.client.load_collection, name)
                self._collections.add(name)
        return []

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self.client = None

    def _collection(self, dim: int, create: bool) -> str | None:
        name = f"{self.prefix}{dim}"
        if name in self._collections:
            return name
        if not self._call("has collection", self.client.has_collection, name):  # another client may have made it
            if not create:
                return None
            self._create(name, dim)
        self._call("load", self.client.load_collection, name)
        self._collections.add(name)
        return name

    def _create(self, name: str, dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("namespace", DataType.VARCHAR, max_length=128)
        schema.add_field("partition", DataType.VARCHAR, max_length=128)
        schema.add_field("created", DataType.DOUBLE)
        schema.add_field("meta", DataType.JSON)
        index = self.client.prepare_index_params()
        if self.ivf:
            index.add_index("vector", index_type="IVF_FLAT", metric_type="IP", params={"nlist": IVF_LISTS})
        else:
            index.add_index("vector", index_type="HNSW", metric_type="IP",
                            params={"M": self.neighbours, "efConstruction": max(64, 2 * self.neighbours)})
        try:
            self._call("create collection", self.client.create_collection, name, schema=schema, index_params=index,
                       timeout=WRITE_TIMEOUT_S)
        except StoreUnavailable:
            if not self._call("has collection", self.client.has_collection, name):  # not a race with another client
                raise

    # -- the interface --------------------------------------------------------------------------------

    def new_id(self) -> int:
        return secrets.randbits(62) + 1  # unique across clients without coordination (a clash is 1 in 2^62)

    def insert(self, entry: Entry, vector: np.ndarray) -> None:
        name = self._collection(entry.dim, create=True)
        row = {"id": entry.id, "vector": np.asarray(vector, dtype=np.float32).tolist(), "namespace": _literal(entry.namespace),
               "partition": _literal(entry.partition), "created": entry.created, "meta": _meta(entry)}
        self._call("insert", self.client.insert, name, [row], timeout=WRITE_TIMEOUT_S)
        self._flushed_now_and_then(name, 1)

    def insert_many(self, entries: list[Entry], vectors: np.ndarray, timeout: float = WRITE_TIMEOUT_S) -> None:
        """Bulk insert (benchmarks and imports): the same rows as `insert`, in one call per collection."""
        by_dim: dict[int, list[dict]] = {}
        for entry, vector in zip(entries, vectors):
            by_dim.setdefault(entry.dim, []).append({"id": entry.id, "vector": np.asarray(vector, dtype=np.float32),
                                                     "namespace": _literal(entry.namespace), "partition": _literal(entry.partition),
                                                     "created": entry.created, "meta": _meta(entry)})
        for dim, rows in by_dim.items():
            name = self._collection(dim, create=True)
            self._call("insert", self.client.insert, name, rows, timeout=timeout)
            self._flushed_now_and_then(name, len(rows))

    def _flushed_now_and_then(self, name: str, rows: int) -> None:
        if not self.python_engine:
            return  # a Milvus server (and Milvus Lite 2.4's C++ engine) indexes growing segments itself
        self._unflushed[name] = self._unflushed.get(name, 0) + rows
        if self._unflushed[name] >= LITE_FLUSH_EVERY:
            try:
                self._call("flush", self.client.flush, name, timeout=WRITE_TIMEOUT_S)
            except StoreUnavailable as error:
                # Only speed depends on it (Milvus Lite may be busy compacting): try again after the next insert.
                logging.getLogger("likeness").debug("approximate cache: %s", error)
                return
            self._unflushed[name] = 0

    def search(self, namespace, partition, vector, skip=frozenset()):
        name = self._collection(int(vector.size), create=False)
        if name is None:
            return None
        expression = f'namespace == "{_literal(namespace)}" and partition == "{_literal(partition)}"'
        if skip:
            expression += f" and id not in {sorted(int(i) for i in skip)}"
        found = self._call("search", self.client.search, name, [np.asarray(vector, dtype=np.float32).tolist()], limit=1,
                           filter=expression, output_fields=["namespace", "partition", "created", "meta"],
                           search_params={"metric_type": "IP", "params": {"nprobe": IVF_PROBES} if self.ivf else {"ef": self.search_depth}})
        hits = found[0] if found else []
        if not hits:
            return None
        hit = hits[0]
        row = dict(hit["entity"], id=hit["id"])
        return _entry(row), float(hit["distance"])

    def update(self, entry: Entry) -> None:
        if not entry.items:
            self.delete([entry])
            return
        name = self._collection(entry.dim, create=False)
        if name is None:
            return
        if self.partial_updates:
            try:
                self._call("update", self.client.upsert, name, [{"id": entry.id, "meta": _meta(entry)}], partial_update=True)
                return
            except StoreUnavailable:
                # Another client deleted the entry meanwhile (evicted or expired): nothing to update.
                if not self._call("get", self.client.get, name, ids=[entry.id], output_fields=["id"]):
                    return
                # The row is there, so the server most likely has no partial upsert (Milvus before 2.6 wants
                # every field): write whole rows from now on (they work on every version, at one more call each).
                self.partial_updates = False
        self._update_whole_row(name, entry)

    def _update_whole_row(self, name: str, entry: Entry) -> None:
        """The entry's row read back and written again with the new counters (servers without partial upsert)."""
        rows = self._call("get", self.client.get, name, ids=[entry.id], output_fields=["vector", "namespace", "partition", "created"])
        if not rows:
            return  # deleted meanwhile
        row = {key: rows[0][key] for key in ("vector", "namespace", "partition", "created")}
        self._call("update", self.client.upsert, name, [dict(row, id=entry.id, meta=_meta(entry))], timeout=WRITE_TIMEOUT_S)

    def delete(self, entries: list[Entry]) -> None:
        by_dim: dict[int, list[int]] = {}
        for entry in entries:
            by_dim.setdefault(entry.dim, []).append(entry.id)
        for dim, ids in by_dim.items():
            name = self._collection(dim, create=False)
            if name is not None:
                self._call("delete", self.client.delete, name, ids=ids, timeout=WRITE_TIMEOUT_S)

    def entries(self) -> list[Entry]:
        """Every entry; the cache calls this from its sweep thread, without its lock (see VectorStore)."""
        listed = []
        for name in sorted(set(self._collections) | {n for n in self._call("list collections", self.client.list_collections)
                                                 if n.startswith(self.prefix)}):
            self._collection(int(name[len(self.prefix):]), create=False)
            fields = ["id", "namespace", "partition", "created", "meta"]
            if self.python_engine:  # one call (Milvus Lite 3 has no query limit; its iterator asks for a timestamp it cannot give)
                listed.extend(_entry(row) for row in self._call("list entries", self.client.query, name, filter="id > 0",
                                                                   output_fields=fields, limit=1 << 40, timeout=LIST_TIMEOUT_S))
                continue
            iterator = self._call("list entries", self.client.query_iterator, name, batch_size=4096, filter="id > 0",
                                  output_fields=fields)
            try:
                while True:
                    rows = self._call("list entries", lambda timeout: iterator.next())
                    if not rows:
                        break
                    listed.extend(_entry(row) for row in rows)
            finally:
                iterator.close()
        return listed

    def drop_collections(self) -> None:
        """Drop every collection with this store's prefix (a benchmark's own, when it is done)."""
        for name in self._call("list collections", self.client.list_collections):
            if name.startswith(self.prefix):
                self._call("drop", self.client.drop_collection, name, timeout=WRITE_TIMEOUT_S)
        self._collections.clear()

    def clear(self) -> None:
        for name in list(self._collections):
            self._call("clear", self.client.delete, name, filter="id > 0", timeout=WRITE_TIMEOUT_S)
