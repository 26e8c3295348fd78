"""The approximate latent cache (NIRVANA, NSDI 2024): resume a new prompt from a similar one's latents.

Policy, in brief:
- A miss keeps the noisy latents after K of the run's steps, for K in {5, 10, 15, 20, 25} of 50
  (scaled to the request's step count), one stored *item* per K.
- A lookup finds the nearest cached prompt by the pipeline's own text embedding (L2-normalised, so
  inner product = cosine similarity) in a faiss HNSW index, one index per *partition*: everything
  that makes a latent unusable for another request (model, size, sampler and step count, guidance,
  negative prompt, batch size, hooks such as a PuLID identity) is hashed into the partition name,
  so a different model or size can never hit.
- The similarity picks K from a table (s > 0.95 -> 25, ... > 0.65 -> 5, else a miss); the deepest
  stored item at or below that K is used. The caller resumes the denoise there.
- Eviction is LCBFU, "least computationally beneficial and frequently used": an item's score is
  K (in fiftieths of the run) x its use count, where the generation that stored it counts as one
  use; the lowest score leaves first (oldest first among equals), until the bytes fit the budget.
  Entries older than the time-to-live (when set) are dropped.
- Everything lives on disk under one folder: a safetensors file per item and per embedding, one
  faiss index file per partition, and `manifest.json`. Files are written to a temporary name,
  fsynced and renamed; the manifest is replaced only after the files it names are in place. On
  start, entries whose files are missing, truncated or unreadable are dropped, files the manifest
  does not name (a write cut short) are deleted, and an unreadable index is rebuilt from the
  embeddings. So a process killed at any point leaves a readable cache.
- Prompts are not stored, only their embeddings and latents; but a hit still shows one prompt's
  composition to whoever sends a similar one, so one cache folder is for one user.

One process per cache folder: two processes writing the same folder would overwrite each other's
manifest (the app and a CLI run should use different cache folders if run at the same time).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipelines.atomic import fsync_folder as _fsync_folder
from pipelines.atomic import write_atomically as _write_atomically
from pipelines.caches.memo import CacheStats

log = logging.getLogger("likeness")

STEPS_OF_50 = (5, 10, 15, 20, 25)  # where latents are kept, in fiftieths of the run
DEFAULT_THRESHOLDS = ((0.95, 25), (0.90, 20), (0.85, 15), (0.75, 10), (0.65, 5))
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ApproximateCacheConfig:
    """- `thresholds`: (similarity, K of 50) pairs, highest first. Lower similarities reuse less of
      the other prompt's run (smaller K); raising them trades hit rate for closeness to the
      uncached image.
    - `max_bytes`: disk budget for latents and embeddings; LCBFU evicts beyond it.
    - `ttl_seconds`: entries older than this are dropped (0 = keep until evicted).
    - `hnsw_neighbours` / `search_depth`: faiss HNSW's M and efSearch. More is slower and finds the
      true nearest prompt more often; at 100k entries the defaults answer in well under 1 ms.
    """

    thresholds: tuple[tuple[float, int], ...] = DEFAULT_THRESHOLDS
    max_bytes: int = 1 << 30
    ttl_seconds: float = 0.0
    hnsw_neighbours: int = 32
    search_depth: int = 32

    def __post_init__(self):
        similarities = [s for s, _ in self.thresholds]
        if similarities != sorted(similarities, reverse=True):
            raise ValueError("approximate cache thresholds must be listed from the highest similarity down")
        if any(not -1.0 <= s <= 1.0 for s in similarities):
            raise ValueError("approximate cache thresholds are cosine similarities, between -1 and 1")
        if any(k not in STEPS_OF_50 for _, k in self.thresholds):
            raise ValueError(f"approximate cache K values must be among {STEPS_OF_50} (fiftieths of the run)")
        if self.max_bytes <= 0:
            raise ValueError("the approximate cache needs a positive byte budget")
        if self.ttl_seconds < 0:
            raise ValueError("the approximate cache time-to-live must be 0 (off) or more")


def parse_thresholds(text: str) -> tuple[tuple[float, int], ...]:
    """'0.95,0.90,0.85,0.75,0.65' (the similarities for K = 25, 20, 15, 10, 5) -> the table."""
    values = [float(part) for part in text.replace(" ", "").split(",") if part]
    if len(values) != len(STEPS_OF_50):
        raise ValueError(f"give {len(STEPS_OF_50)} similarities, for K = 25, 20, 15, 10, 5")
    return tuple(zip(values, sorted(STEPS_OF_50, reverse=True)))


def k_for_similarity(similarity: float, thresholds=DEFAULT_THRESHOLDS) -> int | None:
    """The K (of 50) a prompt this similar may skip; None is a miss."""
    for limit, k in thresholds:
        if similarity > limit:
            return k
    return None


def scaled_step(k_of_50: int, total_steps: int) -> int:
    return round(k_of_50 * total_steps / 50)


def keep_steps(total_steps: int) -> list[int]:
    """The step counts after which a miss keeps its latents: K of 50 scaled, at least 1, short of the end."""
    return sorted({scaled_step(k, total_steps) for k in STEPS_OF_50} & set(range(1, total_steps)))


def normalised(vector) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(array))
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("cannot index a zero or non-finite embedding")
    return array / norm


@dataclass(frozen=True)
class ApproxHit:
    entry_id: int
    step: int  # resume after this many completed steps
    similarity: float
    latents: torch.Tensor
    seconds_saved: float  # estimated from the stored run's seconds per step

    def describe(self) -> str:
        return f"hit K={self.step} s={self.similarity:.2f}"


# -- the vector index: one per partition -------------------------------------------------------------


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
        faiss = _faiss()

        return set(faiss.vector_to_array(self.index.id_map).tolist())

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
        k = min(self.size, k + len(skip))
        scores, ids = self.index.search(vector.reshape(1, -1), k)
        for score, entry_id in zip(scores[0], ids[0]):
            if entry_id >= 0 and entry_id not in self.dead and entry_id not in skip:
                return int(entry_id), float(score)
        return None

    def save(self, path: Path) -> None:
        faiss = _faiss()

        # Serialised here and written by Python, so a full disk is an OSError like every other write.
        data = faiss.serialize_index(self.index).tobytes()
        _write_atomically(path, lambda temporary: temporary.write_bytes(data))

    @classmethod
    def load(cls, path: Path, dim: int, search_depth: int) -> "PartitionIndex":
        faiss = _faiss()

        index = faiss.read_index(str(path))
        if index.d != dim:
            raise ValueError(f"index dimension {index.d}, expected {dim}")
        return cls(dim, search_depth=search_depth, index=index)


# -- on-disk helpers ---------------------------------------------------------------------------------


def _save_tensor(path: Path, name: str, tensor: torch.Tensor) -> None:
    from safetensors.torch import save

    # Serialised in memory and written by Python: safetensors reports a full disk as its own error type.
    data = save({name: tensor.detach().to("cpu").contiguous()})
    _write_atomically(path, lambda temporary: temporary.write_bytes(data))


def _load_tensor(path: Path, name: str) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))[name]


def _readable_header(path: Path, name: str) -> bool:
    """A cheap start-up check: the safetensors header parses and names the tensor."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return name in handle.keys()
    except Exception:  # noqa: BLE001 - any failure to read means the file is unusable
        return False


# -- the cache ---------------------------------------------------------------------------------------


@dataclass
class _Item:
    file: str
    bytes: int
    uses: int = 1  # the generation that stored it counts as one use
    last_used: float = 0.0


@dataclass
class _Entry:
    id: int
    partition: str
    dim: int
    total_steps: int
    created: float
    step_seconds: float
    embedding_file: str
    embedding_bytes: int
    items: dict[int, _Item] = field(default_factory=dict)  # step -> item

    def to_json(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k != "items"}
        data["items"] = {str(step): item.__dict__ for step, item in self.items.items()}
        return data

    @classmethod
    def from_json(cls, data: dict) -> "_Entry":
        items = {int(step): _Item(**item) for step, item in data["items"].items()}
        return cls(**{k: v for k, v in data.items() if k != "items"}, items=items)


class ApproximateCache:
    """See the module docstring for the policy. Thread-safe; one instance per folder."""

    name = "approximate latents"
    policy = "lcbfu"

    def __init__(self, folder: Path, config: ApproximateCacheConfig | None = None, clock=time.time):
        self.folder = Path(folder)
        self.config = config or ApproximateCacheConfig()
        self._clock = clock
        self._lock = threading.RLock()
        self._entries: dict[int, _Entry] = {}
        self._indexes: dict[str, PartitionIndex] = {}
        self._next_id = 1
        self.hits = self.misses = 0
        self.seconds_saved = 0.0
        self.steps_saved = 0
        self._dropped: list[str] = []  # what the opening check removed, and why
        self._is_open = False  # the folder is read and checked on first use, not when the app starts

    @contextmanager
    def _ready(self):
        """Hold the lock, with the folder read and checked (done once, on first use)."""
        with self._lock:
            if not self._is_open:
                self._is_open = True
                self.folder.mkdir(parents=True, exist_ok=True)
                self._open()
            yield

    @property
    def is_open(self) -> bool:
        """Whether the folder has been read yet (the Caches panel shows an unread cache as such)."""
        return self._is_open

    @property
    def dropped_at_start(self) -> list[str]:
        """What the opening check removed (damaged or half-written files), and why."""
        with self._ready():
            return list(self._dropped)

    # -- start-up: read, verify, repair -------------------------------------------------------------

    def _open(self) -> None:
        manifest = self._read_manifest()
        for data in manifest.get("entries", []):
            try:
                entry = _Entry.from_json(data)
            except (TypeError, KeyError, ValueError) as error:
                self._dropped.append(f"an unreadable manifest entry ({error})")
                continue
            problem = self._verify(entry)
            if problem:
                self._dropped.append(f"entry {entry.id}: {problem}")
                continue
            self._entries[entry.id] = entry
        self._next_id = max([manifest.get("next_id", 1)] + [e.id + 1 for e in self._entries.values()])
        self._delete_unlisted_files()
        self._expire()
        self._open_indexes()
        if self._dropped:
            log.warning("approximate cache %s: dropped %s", self.folder, "; ".join(self._dropped))
            self._write_manifest()

    def _read_manifest(self) -> dict:
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
            self._dropped.append(f"the manifest could not be read ({error}); kept as {kept.name}, starting empty")
            return {}

    def _verify(self, entry: _Entry) -> str | None:
        """None if the entry's embedding is readable; unreadable items are removed from it."""
        embedding = self.folder / entry.embedding_file
        if not embedding.is_file() or embedding.stat().st_size != entry.embedding_bytes or not _readable_header(embedding, "embedding"):
            return "its embedding file is missing or damaged"
        for step, item in list(entry.items.items()):
            path = self.folder / item.file
            if not path.is_file() or path.stat().st_size != item.bytes or not _readable_header(path, "latents"):
                self._dropped.append(f"entry {entry.id} step {step}: the latent file is missing, truncated or damaged")
                del entry.items[step]
        return None if entry.items else "no readable latents left"

    def _delete_unlisted_files(self) -> None:
        """Files no entry names: a write cut short (temporary files) or a put whose manifest never landed."""
        listed = {MANIFEST} | {f"index-{p}.faiss" for p in {e.partition for e in self._entries.values()}}
        for entry in self._entries.values():
            listed.add(entry.embedding_file)
            listed.update(item.file for item in entry.items.values())
        for path in self.folder.iterdir():
            if path.is_file() and path.name not in listed and not path.name.startswith(f"{MANIFEST}.bad-"):
                path.unlink(missing_ok=True)

    def _open_indexes(self) -> None:
        by_partition: dict[str, list[_Entry]] = {}
        for entry in self._entries.values():
            by_partition.setdefault(entry.partition, []).append(entry)
        for partition, entries in by_partition.items():
            path = self.folder / f"index-{partition}.faiss"
            dim = entries[0].dim
            index = None
            if path.exists():
                try:
                    index = PartitionIndex.load(path, dim, self.config.search_depth)
                except Exception as error:  # noqa: BLE001 - faiss raises RuntimeError for truncated files
                    self._dropped.append(f"index {path.name} could not be read ({error.__class__.__name__}); rebuilt from the embeddings")
            live = {e.id for e in entries}
            if index is None:
                index = PartitionIndex(dim, self.config.hnsw_neighbours, self.config.search_depth)
            present = index.ids()
            index.dead = present - live
            missing = [e for e in entries if e.id not in present]  # a put whose index write did not land
            if missing:
                index.add_many([e.id for e in missing], np.stack([self._embedding(e) for e in missing]))
                index.save(path)
            self._indexes[partition] = index

    def _embedding(self, entry: _Entry) -> np.ndarray:
        return _load_tensor(self.folder / entry.embedding_file, "embedding").numpy()

    # -- lookup and store ---------------------------------------------------------------------------

    def lookup(self, partition: str, vector, total_steps: int, skip: set[int] = frozenset()) -> ApproxHit | None:
        """The latents to resume from for a prompt with embedding `vector`, or None (a miss)."""
        query = normalised(vector)
        with self._ready():
            self._expire()
            index = self._indexes.get(partition)
            found = index.search(query, skip) if index is not None and index.dim == query.size else None
            hit = self._take(found, total_steps) if found else None
            if hit is None:
                self.misses += 1
                return None
            self.hits += 1
            self.steps_saved += hit.step
            self.seconds_saved += hit.seconds_saved
            return hit

    def _take(self, found: tuple[int, float], total_steps: int) -> ApproxHit | None:
        entry_id, similarity = found
        entry = self._entries[entry_id]
        k = k_for_similarity(similarity, self.config.thresholds)
        if k is None or entry.total_steps != total_steps:
            return None
        usable = [step for step in entry.items if step <= scaled_step(k, total_steps)]
        if not usable:
            return None
        step = max(usable)
        item = entry.items[step]
        try:
            latents = _load_tensor(self.folder / item.file, "latents")
        except Exception as error:  # noqa: BLE001 - a file damaged since start-up costs the item, not the run
            log.warning("approximate cache: dropped entry %d step %d, its file could not be read (%s)", entry_id, step, error)
            self._drop_item(entry, step)
            self._compact_indexes()
            self._write_manifest()
            return None
        item.uses += 1
        item.last_used = self._clock()
        self._write_manifest()
        return ApproxHit(entry_id, step, similarity, latents, step * entry.step_seconds)

    def store(self, partition: str, vector, total_steps: int, latents_by_step: dict[int, torch.Tensor], step_seconds: float = 0.0) -> int | None:
        """Keep a missed run's latents; returns the new entry's id (None when nothing fits the budget).

        A write that fails (a full disk) keeps nothing, removes the files it wrote, logs a warning
        and returns None: a cache that cannot grow must not fail the generation."""
        if not latents_by_step:
            return None
        embedding = torch.from_numpy(normalised(vector))
        with self._ready():
            entry_id = self._next_id
            self._next_id += 1
            now = self._clock()
            embedding_file = f"e{entry_id:08d}.emb.safetensors"
            entry = _Entry(entry_id, partition, int(embedding.numel()), total_steps, now, step_seconds, embedding_file, 0)
            try:
                _save_tensor(self.folder / embedding_file, "embedding", embedding)
                entry.embedding_bytes = (self.folder / embedding_file).stat().st_size
                for step, latents in sorted(latents_by_step.items()):
                    name = f"e{entry_id:08d}.s{step:03d}.safetensors"
                    _save_tensor(self.folder / name, "latents", latents)
                    entry.items[step] = _Item(name, (self.folder / name).stat().st_size, 1, now)
                _fsync_folder(self.folder)
            except OSError as error:
                return self._store_failed(entry, error)
            self._entries[entry_id] = entry
            self._evict()
            self._compact_indexes()
            if entry_id not in self._entries:  # larger than the whole budget
                self._write_manifest()
                return None
            try:
                self._write_manifest()  # the commit point: the files it names are already on disk
            except OSError as error:
                del self._entries[entry_id]
                return self._store_failed(entry, error)
            index = self._indexes.get(partition)
            if index is None:
                index = self._indexes[partition] = PartitionIndex(entry.dim, self.config.hnsw_neighbours, self.config.search_depth)
            index.add(entry_id, embedding.numpy())
            try:
                index.save(self.folder / f"index-{partition}.faiss")
            except OSError as error:  # the entry is committed; the next start adds it to the index file
                log.warning("approximate cache %s: could not update the index file (%s)", self.folder, error.strerror or error)
            return entry_id

    def _store_failed(self, entry: _Entry, error: OSError) -> None:
        for name in [entry.embedding_file] + [item.file for item in entry.items.values()]:
            (self.folder / name).unlink(missing_ok=True)
        reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        log.warning("approximate cache %s: could not keep this run's latents (%s); nothing was stored", self.folder, reason)
        return None

    # -- eviction -----------------------------------------------------------------------------------

    def _score(self, entry: _Entry, step: int) -> float:
        """LCBFU: K in fiftieths of the run (what a hit saves) x how often the item was used."""
        return 50 * step / entry.total_steps * entry.items[step].uses

    def eviction_order(self) -> list[tuple[int, int]]:
        """(entry id, step) pairs, the first to leave first."""
        with self._ready():
            pairs = [(self._score(e, s), item.last_used, e.id, s) for e in self._entries.values() for s, item in e.items.items()]
            return [(entry_id, step) for _, _, entry_id, step in sorted(pairs)]

    def _evict(self) -> None:
        order = iter(self.eviction_order())
        while self._bytes() > self.config.max_bytes:
            entry_id, step = next(order)
            self._drop_item(self._entries[entry_id], step)

    def _drop_item(self, entry: _Entry, step: int) -> None:
        item = entry.items.pop(step)
        (self.folder / item.file).unlink(missing_ok=True)
        if not entry.items:
            self._drop_entry(entry)

    def _drop_entry(self, entry: _Entry) -> None:
        """Delete its files and mark it dead in its index; `_compact_indexes` tidies the indexes after."""
        for item in entry.items.values():
            (self.folder / item.file).unlink(missing_ok=True)
        (self.folder / entry.embedding_file).unlink(missing_ok=True)
        del self._entries[entry.id]
        index = self._indexes.get(entry.partition)
        if index is not None:
            index.dead.add(entry.id)

    def _compact_indexes(self) -> None:
        """Once after a round of drops: remove the index of an emptied partition, and rebuild an index
        whose tombstones outnumber its live vectors (HNSW cannot delete)."""
        live_by_partition: dict[str, list[_Entry]] = {}
        for entry in self._entries.values():
            live_by_partition.setdefault(entry.partition, []).append(entry)
        for partition, index in list(self._indexes.items()):
            live = live_by_partition.get(partition, [])
            path = self.folder / f"index-{partition}.faiss"
            if not live:
                del self._indexes[partition]
                path.unlink(missing_ok=True)
            elif len(index.dead) > len(live):
                rebuilt = PartitionIndex(index.dim, self.config.hnsw_neighbours, self.config.search_depth)
                rebuilt.add_many([e.id for e in live], np.stack([self._embedding(e) for e in live]))
                rebuilt.save(path)
                self._indexes[partition] = rebuilt

    def _expire(self) -> None:
        if not self.config.ttl_seconds:
            return
        oldest = self._clock() - self.config.ttl_seconds
        expired = [e for e in self._entries.values() if e.created < oldest]
        for entry in expired:
            self._drop_entry(entry)
        if expired:
            self._compact_indexes()
            self._write_manifest()

    def _bytes(self) -> int:
        return sum(e.embedding_bytes + sum(i.bytes for i in e.items.values()) for e in self._entries.values())

    def _write_manifest(self) -> None:
        data = {"version": FORMAT_VERSION, "next_id": self._next_id, "entries": [e.to_json() for e in self._entries.values()]}
        text = json.dumps(data, separators=(",", ":"))
        _write_atomically(self.folder / MANIFEST, lambda temporary: temporary.write_text(text))

    # -- the Caches panel ---------------------------------------------------------------------------

    def entry_ids(self) -> list[int]:
        with self._ready():
            return sorted(self._entries)

    def clear(self) -> None:
        with self._ready():
            for entry in list(self._entries.values()):
                self._drop_entry(entry)
            self._compact_indexes()
            self._write_manifest()

    def stats(self) -> CacheStats:
        """Entries are stored latents (one per prompt and K); `max_entries` is 0: the limit is bytes."""
        with self._ready():
            self._expire()
            items = sum(len(e.items) for e in self._entries.values())
            return CacheStats(self.name, self.policy, items, 0, self._bytes(), self.hits, self.misses, self.seconds_saved)


def partition_key(*parts) -> str:
    """A short, stable, file-name-safe name for everything that must match for a latent to be reused."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
