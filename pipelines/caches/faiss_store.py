"""The approximate cache's embedded store: faiss HNSW indexes and a manifest in the cache folder.

On disk (unchanged from before the store interface): `manifest.json` (every entry, its items and
counters), one `e<id>.emb.safetensors` per entry (its unit prompt embedding) and one
`index-<partition>.faiss` per partition. Files are written to a temporary name, fsynced and
renamed; the manifest is replaced only after the files it names are in place, and it is the commit
point of an insert. On open, entries whose embedding is missing or damaged are dropped, an
unreadable index is rebuilt from the embeddings, and embeddings missing from an index (an insert
whose index write did not land) are added. One process per folder: two would overwrite each
other's manifest.

A namespace other than the default one gets its own indexes (`index-<hash of namespace and
partition>.faiss`), so a search never crosses namespaces.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.atomic import write_atomically
from pipelines.caches.vector_store import Entry, Item, VectorStore

log = logging.getLogger("likeness")

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def _faiss():
    """faiss, imported on first use; its loader's INFO lines about CPU-specific builds are noise here."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


class PartitionIndex:
    """A faiss HNSW inner-product index over one partition's prompt embeddings, keyed by entry id.

    HNSW cannot remove vectors, so dropped entries stay as tombstones that searches skip; the
    index is rebuilt from the live vectors once tombstones outnumber them.
    """

    def __init__(self, dim: int, neighbours: int = 32, search_depth: int = 32, index=None):
        faiss = _faiss()

        self.dim = dim
        self.search_depth = search_depth
        if index is None:
            index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(dim, neighbours, faiss.METRIC_INNER_PRODUCT))
        self.index = index
        faiss.downcast_index(self.index.index).hnsw.efSearch = search_depth
        self.dead: set[int] = set()

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> set[int]:
        return set(_faiss().vector_to_array(self.index.id_map).tolist())

    def add(self, entry_id: int, vector: np.ndarray) -> None:
        self.index.add_with_ids(vector.reshape(1, -1), np.array([entry_id], dtype=np.int64))
        self.dead.discard(entry_id)

    def add_many(self, ids: list[int], vectors: np.ndarray) -> None:
        if ids:
            self.index.add_with_ids(vectors.astype(np.float32), np.asarray(ids, dtype=np.int64))

    def search(self, vector: np.ndarray, skip: set[int] = frozenset(), k: int = 8) -> tuple[int, float] | None:
        """(entry id, similarity) of the nearest live entry not in `skip`, or None."""
        if self.size == 0:
            return None
        k = min(self.size, k + len(skip) + len(self.dead))
        scores, ids = self.index.search(vector.reshape(1, -1), k)
        for score, entry_id in zip(scores[0], ids[0]):
            if entry_id >= 0 and entry_id not in self.dead and entry_id not in skip:
                return int(entry_id), float(score)
        return None

    def save(self, path: Path) -> None:
        # Serialised here and written by Python, so a full disk is an OSError like every other write.
        data = _faiss().serialize_index(self.index).tobytes()
        write_atomically(path, lambda temporary: temporary.write_bytes(data))

    @classmethod
    def load(cls, path: Path, dim: int, search_depth: int) -> "PartitionIndex":
        index = _faiss().read_index(str(path))
        if index.d != dim:
            raise ValueError(f"index dimension {index.d}, expected {dim}")
        return cls(dim, search_depth=search_depth, index=index)


def save_tensor(path: Path, name: str, tensor: torch.Tensor) -> str:
    """Write one tensor as safetensors, crash-safely; returns the file's sha256."""
    from safetensors.torch import save

    # Serialised in memory and written by Python: safetensors reports a full disk as its own error type.
    data = save({name: tensor.detach().to("cpu").contiguous()})
    write_atomically(path, lambda temporary: temporary.write_bytes(data))
    return hashlib.sha256(data).hexdigest()


def load_tensor(path: Path, name: str, sha256: str = "") -> torch.Tensor:
    """Read one tensor; ValueError when the file's hash is not `sha256` (when given)."""
    from safetensors.torch import load

    data = Path(path).read_bytes()
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{Path(path).name} does not match its hash")
    return load(data)[name]


def readable_header(path: Path, name: str) -> bool:
    """A cheap start-up check: the safetensors header parses and names the tensor."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return name in handle.keys()
    except Exception:  # noqa: BLE001 - any failure to read means the file is unusable
        return False


def _entry_to_json(entry: Entry, embedding_file: str) -> dict:
    data = {"id": entry.id, "partition": entry.partition, "dim": entry.dim, "total_steps": entry.total_steps,
            "created": entry.created, "step_seconds": entry.step_seconds, "embedding_file": embedding_file,
            "embedding_bytes": entry.store_bytes,
            "items": {str(step): {k: v for k, v in item.__dict__.items() if v != "" or k != "sha256"} for step, item in entry.items.items()}}
    if entry.namespace:
        data["namespace"] = entry.namespace
    return data


def _entry_from_json(data: dict) -> tuple[Entry, str]:
    items = {int(step): Item(**item) for step, item in data["items"].items()}
    entry = Entry(int(data["id"]), str(data["partition"]), int(data["dim"]), int(data["total_steps"]), float(data["created"]),
                  float(data["step_seconds"]), items, str(data.get("namespace", "")), int(data["embedding_bytes"]))
    return entry, str(data["embedding_file"])


class FaissStore(VectorStore):
    """See the module docstring. Not thread-safe by itself: the cache holds its lock around every call."""

    shared = False
    sweep_seconds = 0.0  # everything is in memory: eviction and expiry run on every lookup and store

    def __init__(self, folder: Path, neighbours: int = 32, search_depth: int = 32):
        self.folder = Path(folder)
        self.neighbours = neighbours
        self.search_depth = search_depth
        self._entries: dict[int, Entry] = {}
        self._embedding_files: dict[int, str] = {}
        self._indexes: dict[tuple[str, str], PartitionIndex] = {}
        self._next_id = 1

    def describe(self) -> str:
        return f"the faiss index in {self.folder}"

    def index_file(self, namespace: str, partition: str) -> str:
        if not namespace:
            return f"index-{partition}.faiss"
        return f"index-{hashlib.sha256(repr((namespace, partition)).encode()).hexdigest()[:16]}.faiss"

    # -- open: read, verify, repair -------------------------------------------------------------------

    def open(self) -> list[str]:
        self.folder.mkdir(parents=True, exist_ok=True)
        notes: list[str] = []
        manifest = self._read_manifest(notes)
        for data in manifest.get("entries", []):
            try:
                entry, embedding_file = _entry_from_json(data)
            except (TypeError, KeyError, ValueError) as error:
                notes.append(f"an unreadable manifest entry ({error})")
                continue
            path = self.folder / embedding_file
            if not path.is_file() or path.stat().st_size != entry.store_bytes or not readable_header(path, "embedding"):
                notes.append(f"entry {entry.id}: its embedding file is missing or damaged")
                continue
            self._entries[entry.id] = entry
            self._embedding_files[entry.id] = embedding_file
        self._next_id = max([manifest.get("next_id", 1)] + [e.id + 1 for e in self._entries.values()])
        self._open_indexes(notes)
        if notes or not (self.folder / MANIFEST).exists():
            self._write_manifest()
        return notes

    def _read_manifest(self, notes: list[str]) -> dict:
        path = self.folder / MANIFEST
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
                raise ValueError("not a version-1 manifest")
            return data
        except (OSError, ValueError) as error:
            kept = path.with_name(f"{MANIFEST}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, kept)
            notes.append(f"the manifest could not be read ({error}); kept as {kept.name}, starting empty")
            return {}

    def _by_partition(self) -> dict[tuple[str, str], list[Entry]]:
        groups: dict[tuple[str, str], list[Entry]] = {}
        for entry in self._entries.values():
            groups.setdefault((entry.namespace, entry.partition), []).append(entry)
        return groups

    def _open_indexes(self, notes: list[str]) -> None:
        for key, entries in self._by_partition().items():
            path = self.folder / self.index_file(*key)
            dim = entries[0].dim
            index = None
            if path.exists():
                try:
                    index = PartitionIndex.load(path, dim, self.search_depth)
                except Exception as error:  # noqa: BLE001 - faiss raises RuntimeError for truncated files
                    notes.append(f"index {path.name} could not be read ({error.__class__.__name__}); rebuilt from the embeddings")
            if index is None:
                index = PartitionIndex(dim, self.neighbours, self.search_depth)
            present = index.ids()
            index.dead = present - {e.id for e in entries}
            missing = [e for e in entries if e.id not in present]  # an insert whose index write did not land
            if missing:
                index.add_many([e.id for e in missing], np.stack([self.embedding(e) for e in missing]))
                index.save(path)
            self._indexes[key] = index

    def embedding(self, entry: Entry) -> np.ndarray:
        return load_tensor(self.folder / self._embedding_files[entry.id], "embedding").numpy()

    # -- the interface --------------------------------------------------------------------------------

    def new_id(self) -> int:
        entry_id = self._next_id
        self._next_id += 1
        return entry_id

    def insert(self, entry: Entry, vector: np.ndarray) -> None:
        embedding_file = f"e{entry.id:08d}.emb.safetensors"
        path = self.folder / embedding_file
        try:
            save_tensor(path, "embedding", torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float32)))
            entry.store_bytes = path.stat().st_size
            self._entries[entry.id] = entry
            self._embedding_files[entry.id] = embedding_file
            self._write_manifest()  # the commit point: the files it names are already on disk
        except OSError:
            self._entries.pop(entry.id, None)
            self._embedding_files.pop(entry.id, None)
            path.unlink(missing_ok=True)
            raise
        key = (entry.namespace, entry.partition)
        index = self._indexes.get(key)
        if index is None:
            index = self._indexes[key] = PartitionIndex(entry.dim, self.neighbours, self.search_depth)
        index.add(entry.id, vector)
        try:
            index.save(self.folder / self.index_file(*key))
        except OSError as error:  # the entry is committed; the next open adds it to the index file
            log.warning("approximate cache %s: could not update the index file (%s)", self.folder, error.strerror or error)

    def search(self, namespace, partition, vector, skip=frozenset()):
        index = self._indexes.get((namespace, partition))
        if index is None or index.dim != vector.size:
            return None
        found = index.search(vector, skip)
        if found is None:
            return None
        entry_id, similarity = found
        return self._entries[entry_id], similarity

    def update(self, entry: Entry) -> None:
        if not entry.items:
            self.delete([entry])
            return
        self._write_manifest()  # the cache changed the entry in place (it is ours)

    def delete(self, entries: list[Entry]) -> None:
        for entry in entries:
            if self._entries.pop(entry.id, None) is None:
                continue
            (self.folder / self._embedding_files.pop(entry.id)).unlink(missing_ok=True)
            index = self._indexes.get((entry.namespace, entry.partition))
            if index is not None:
                index.dead.add(entry.id)
        self._compact_indexes()
        self._write_manifest()

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def own_files(self) -> set[str]:
        return {MANIFEST} | set(self._embedding_files.values()) | {self.index_file(*key) for key in self._by_partition()}

    def _compact_indexes(self) -> None:
        """After a round of drops: remove the index of an emptied partition, and rebuild an index whose
        tombstones outnumber its live vectors (HNSW cannot delete)."""
        live_by_partition = self._by_partition()
        for key, index in list(self._indexes.items()):
            live = live_by_partition.get(key, [])
            path = self.folder / self.index_file(*key)
            if not live:
                del self._indexes[key]
                path.unlink(missing_ok=True)
            elif len(index.dead) > len(live):
                rebuilt = PartitionIndex(index.dim, self.neighbours, self.search_depth)
                rebuilt.add_many([e.id for e in live], np.stack([self.embedding(e) for e in live]))
                rebuilt.save(path)
                self._indexes[key] = rebuilt

    def _write_manifest(self) -> None:
        data = {"version": FORMAT_VERSION, "next_id": self._next_id,
                "entries": [_entry_to_json(e, self._embedding_files[e.id]) for e in self._entries.values()]}
        text = json.dumps(data, separators=(",", ":"))
        write_atomically(self.folder / MANIFEST, lambda temporary: temporary.write_text(text))
