"""The approximate latent cache (NIRVANA, NSDI 2024): resume a new prompt from a similar one's latents.

Policy, in brief:
- A miss keeps the noisy latents after K of the run's steps, for K in {5, 10, 15, 20, 25} of 50
  (scaled to the request's step count), one stored *item* per K.
- A lookup finds the nearest cached prompt by the pipeline's own text embedding (L2-normalised, so
  inner product = cosine similarity) in a vector store (`pipelines.caches.vector_store`: the
  embedded faiss store by default, or Milvus, shared by several workers or machines), searched
  within one *namespace* (a user or API key; "" = the single-user default) and one *partition*:
  everything that makes a latent unusable for another request (model, size, sampler and step
  count, guidance, negative prompt, batch size, hooks such as a PuLID identity) is hashed into the
  partition name, so a different model, size or user can never hit.
- The similarity picks K from a table (s > 0.95 -> 25, ... > 0.65 -> 5, else a miss); the deepest
  stored item at or below that K is used. The caller resumes the denoise there.
- Latents are safetensors files in the cache folder (for a shared store, a folder every worker
  sees), written crash-safely and fsynced *before* their vector is inserted, and checked against
  their sha256 when read: a missing, truncated or altered file drops its item (and the entry when
  none is left) and is never served.
- Eviction is LCBFU, "least computationally beneficial and frequently used": an item's score is
  K (in fiftieths of the run) x its use count, where the generation that stored it counts as one
  use; the lowest score leaves first (oldest first among equals), until the bytes fit the budget.
  Entries older than the time-to-live (when set) are dropped, and never served meanwhile. Both run
  here, for every store, in the process that `maintains` the cache (for a shared store: one
  process, the UI's; other clients only look up and store). A shared store's sweep runs in a
  background thread: its listing scans the collection, seconds at 100k entries in Milvus Lite.
- The embedded store keeps everything under the folder and checks it on first use: entries whose
  files are missing, truncated or unreadable are dropped, files no entry names (a write cut short)
  are deleted, an unreadable index is rebuilt. So a process killed at any point leaves a readable
  cache. One process per folder with it.
- A store that cannot be reached (Milvus down at start or mid-run) turns the cache off for the
  rest of the run: lookups miss, nothing is stored, `unavailable` says why (once, in the log too);
  generation goes on.
- Prompts are not stored, only their embeddings and latents; but a hit still shows one prompt's
  composition to whoever sends a similar one: one namespace (or one cache folder) per user.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines.atomic import fsync_folder, remove_stale_temporaries
from pipelines.caches.faiss_store import MANIFEST, FORMAT_VERSION, PartitionIndex, load_tensor, readable_header, save_tensor
from pipelines.caches.memo import CacheStats
from pipelines.caches.vector_store import Entry, Item, StoreUnavailable, VectorStore, open_store

log = logging.getLogger("likeness")

STEPS_OF_50 = (5, 10, 15, 20, 25)  # where latents are kept, in fiftieths of the run
DEFAULT_THRESHOLDS = ((0.95, 25), (0.90, 20), (0.85, 15), (0.75, 10), (0.65, 5))
ORPHAN_GRACE_SECONDS = 600.0  # a shared folder: a file no entry names yet may be another client's store in progress
__all__ = ["ApproximateCache", "ApproximateCacheConfig", "ApproxHit", "PartitionIndex", "StoreUnavailable", "MANIFEST",
           "FORMAT_VERSION", "k_for_similarity", "keep_steps", "parse_thresholds", "partition_key", "scaled_step"]


@dataclass(frozen=True)
class ApproximateCacheConfig:
    """- `thresholds`: (similarity, K of 50) pairs, highest first. Lower similarities reuse less of
      the other prompt's run (smaller K); raising them trades hit rate for closeness to the
      uncached image.
    - `max_bytes`: disk budget for latents and embeddings; LCBFU evicts beyond it.
    - `ttl_seconds`: entries older than this are dropped (0 = keep until evicted).
    - `hnsw_neighbours` / `search_depth`: HNSW's M and efSearch (faiss and Milvus alike). More is
      slower and finds the true nearest prompt more often; at 100k entries faiss answers in well under 1 ms.
    - `uri`: where the vectors live. Empty: the embedded faiss index in the cache folder. A Milvus
      URI: `./cache.db` (Milvus Lite in that folder, one process) or `http://host:19530` (a server
      shared by every worker; the latents folder must then be one path every worker sees).
    - `sweep_seconds`: how often eviction and expiry list every entry (None: the store's default,
      every time for faiss, 30 s for Milvus, where a listing scans the collection).
    """

    thresholds: tuple[tuple[float, int], ...] = DEFAULT_THRESHOLDS
    max_bytes: int = 1 << 30
    ttl_seconds: float = 0.0
    hnsw_neighbours: int = 32
    search_depth: int = 32
    uri: str = ""
    sweep_seconds: float | None = None

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


# -- the cache ---------------------------------------------------------------------------------------


def namespace_key(namespace: str) -> str:
    """What a store keeps for a namespace: "" stays "" (the single-user default), anything else a hash,
    so a user name or API key is never written to the store."""
    return "" if not namespace else "ns-" + hashlib.sha256(namespace.encode()).hexdigest()[:24]


def latent_file(entry_id: int, step: int) -> str:
    return f"e{entry_id:08d}.s{step:03d}.safetensors"


def _is_latent_file(name: str) -> bool:
    return name.startswith("e") and ".s" in name and name.endswith(".safetensors") and not name.endswith(".emb.safetensors")


class ApproximateCache:
    """See the module docstring for the policy. Thread-safe; one instance per process.

    `vectors`: the store (default: from `config.uri`, opened on first use). `maintains`: this
    process runs eviction, expiry and the orphan sweep (for a shared store, exactly one process should).
    """

    name = "approximate latents"
    policy = "lcbfu"

    def __init__(self, folder: Path, config: ApproximateCacheConfig | None = None, clock=time.time,
                 vectors: VectorStore | None = None, maintains: bool = True):
        self.folder = Path(folder)
        self.config = config or ApproximateCacheConfig()
        self.maintains = maintains
        self._clock = clock
        self._lock = threading.RLock()
        self._vectors = vectors
        self.hits = self.misses = 0
        self.seconds_saved = 0.0
        self.steps_saved = 0
        self.unavailable: str | None = None  # why the cache is off for this run (a store that cannot be reached)
        self._dropped: list[str] = []  # what the opening check removed, and why
        self._is_open = False  # the folder is read and checked on first use, not when the app starts
        self._swept_at = -math.inf  # time.monotonic() of the last eviction/expiry pass
        self._listing: tuple[float, list[Entry]] | None = None  # (monotonic time, entries) for a shared store's stats
        self._sweeper: threading.Thread | None = None  # a shared store's sweep in progress

    @contextmanager
    def _ready(self):
        """Hold the lock, with the store opened and the folder checked (done once, on first use)."""
        with self._lock:
            if not self._is_open:
                self._is_open = True
                self._open()
            yield

    @property
    def is_open(self) -> bool:
        """Whether the folder has been read yet (the Caches panel shows an unread cache as such)."""
        return self._is_open

    @property
    def vectors(self) -> VectorStore | None:
        """The vector store, opened (None when the cache is off)."""
        with self._ready():
            return None if self.unavailable else self._vectors

    @property
    def dropped_at_start(self) -> list[str]:
        """What the opening check removed (damaged or half-written files), and why."""
        with self._ready():
            return list(self._dropped)

    def _turn_off(self, error: Exception) -> None:
        self.unavailable = str(error)
        log.warning("approximate cache off for this run (generation goes on without it): %s", error)
        if self._vectors is not None:
            self._vectors.close()

    # -- start-up: open the store, verify, repair ------------------------------------------------------

    def _open(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not os.access(self.folder, os.W_OK):
                raise StoreUnavailable(f"the latents folder {self.folder} is not writable")
            if self._vectors is None:
                self._vectors = open_store(self.config.uri, self.folder, self.config)
            self._dropped.extend(self._vectors.open())
            if not self._vectors.shared:  # a shared folder is checked file by file, when read
                self._check_files()
            self._maintain(force=True)  # a process killed between a store's commit and its eviction left too many bytes
        except StoreUnavailable as error:
            self._turn_off(error)
            return
        except OSError as error:
            self._turn_off(StoreUnavailable(f"the latents folder {self.folder} cannot be used ({error.strerror or error})"))
            return
        if self._dropped:
            log.warning("approximate cache %s: dropped %s", self.folder, "; ".join(self._dropped))

    def _check_files(self) -> None:
        """Local store: drop items whose latent file is missing, truncated or unreadable, then delete
        files no entry names (a write cut short, or a store whose commit never landed)."""
        emptied = []
        for entry in self._vectors.entries():
            damaged = False
            for step, item in list(entry.items.items()):
                path = self.folder / item.file
                if not path.is_file() or path.stat().st_size != item.bytes or not readable_header(path, "latents"):
                    self._dropped.append(f"entry {entry.id} step {step}: the latent file is missing, truncated or damaged")
                    del entry.items[step]
                    damaged = True
            if not entry.items:
                self._dropped.append(f"entry {entry.id}: no readable latents left")
                emptied.append(entry)
            elif damaged:
                self._vectors.update(entry)
        if emptied:
            self._vectors.delete(emptied)
        listed = self._vectors.own_files()
        for entry in self._vectors.entries():
            listed.update(item.file for item in entry.items.values())
        for path in self.folder.iterdir():
            if path.is_file() and path.name not in listed and not path.name.startswith(f"{MANIFEST}.bad-"):
                path.unlink(missing_ok=True)

    # -- lookup and store ---------------------------------------------------------------------------

    def lookup(self, partition: str, vector, total_steps: int, skip: set[int] = frozenset(), namespace: str = "") -> ApproxHit | None:
        """The latents to resume from for a prompt with embedding `vector`, or None (a miss, or the cache is off)."""
        query = normalised(vector)
        with self._ready():
            if self.unavailable:
                return None
            try:
                if self.config.ttl_seconds or self._vectors.shared:  # a local store's budget changes only when it stores
                    self._maintain()
                hit = self._find(namespace_key(namespace), partition, query, total_steps, skip)
            except StoreUnavailable as error:
                self._turn_off(error)
                return None
            if hit is None:
                self.misses += 1
                return None
            self.hits += 1
            self.steps_saved += hit.step
            self.seconds_saved += hit.seconds_saved
            return hit

    def _find(self, namespace: str, partition: str, query: np.ndarray, total_steps: int, skip) -> ApproxHit | None:
        found = self._vectors.search(namespace, partition, query, skip)
        if found is None:
            return None
        entry, similarity = found
        now = self._clock()
        if self.config.ttl_seconds and entry.created < now - self.config.ttl_seconds:
            return None  # expired: never served, whoever sweeps it
        k = k_for_similarity(similarity, self.config.thresholds)
        if k is None or entry.total_steps != total_steps:
            return None
        usable = [step for step in entry.items if step <= scaled_step(k, total_steps)]
        if not usable:
            return None
        step = max(usable)
        item = entry.items[step]
        try:
            latents = load_tensor(self.folder / item.file, "latents", item.sha256)
        except Exception as error:  # noqa: BLE001 - a missing or damaged file costs the item, not the run
            log.warning("approximate cache: dropped entry %d step %d, its latent file could not be used (%s)", entry.id, step, error)
            del entry.items[step]
            self._vectors.update(entry)  # deletes the entry when no item is left
            (self.folder / item.file).unlink(missing_ok=True)
            return None
        item.uses += 1
        item.last_used = now
        self._vectors.update(entry)
        return ApproxHit(entry.id, step, similarity, latents, step * entry.step_seconds)

    def store(self, partition: str, vector, total_steps: int, latents_by_step: dict[int, torch.Tensor], step_seconds: float = 0.0,
              namespace: str = "") -> int | None:
        """Keep a missed run's latents; returns the new entry's id (None when nothing fits the budget,
        or the cache is off).

        The latent files are written (and fsynced) first, then the vector is inserted: a reader never
        finds an entry whose files are not complete. A write that fails (a full disk) keeps nothing,
        removes the files it wrote, logs a warning and returns None: a cache that cannot grow must not
        fail the generation."""
        if not latents_by_step:
            return None
        embedding = normalised(vector)
        with self._ready():
            if self.unavailable:
                return None
            now = self._clock()
            entry = Entry(self._vectors.new_id(), partition, int(embedding.size), total_steps, now, step_seconds, {}, namespace_key(namespace))
            try:
                for step, latents in sorted(latents_by_step.items()):
                    name = latent_file(entry.id, step)
                    digest = save_tensor(self.folder / name, "latents", latents)
                    entry.items[step] = Item(name, (self.folder / name).stat().st_size, 1, now, digest)
                fsync_folder(self.folder)
            except OSError as error:
                return self._store_failed(entry, error)
            if entry.bytes > self.config.max_bytes:  # larger than the whole budget: never inserted
                self._remove_files(entry)
                return None
            try:
                self._vectors.insert(entry, embedding)
            except OSError as error:
                return self._store_failed(entry, error)
            except StoreUnavailable as error:
                self._remove_files(entry)
                self._turn_off(error)
                return None
            try:
                dropped = self._maintain()
            except StoreUnavailable as error:
                self._turn_off(error)
                return None
            return None if entry.id in dropped else entry.id

    def _remove_files(self, entry: Entry) -> None:
        for item in entry.items.values():
            (self.folder / item.file).unlink(missing_ok=True)

    def _store_failed(self, entry: Entry, error: OSError) -> None:
        self._remove_files(entry)
        reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        log.warning("approximate cache %s: could not keep this run's latents (%s); nothing was stored", self.folder, reason)
        return None

    # -- eviction and expiry: here only, for every store ----------------------------------------------

    @staticmethod
    def _score(entry: Entry, step: int) -> float:
        """LCBFU: K in fiftieths of the run (what a hit saves) x how often the item was used."""
        return 50 * step / entry.total_steps * entry.items[step].uses

    @classmethod
    def _order(cls, entries: list[Entry]) -> list[tuple[Entry, int]]:
        pairs = [(cls._score(e, s), item.last_used, e.id, s, e) for e in entries for s, item in e.items.items()]
        return [(entry, step) for _, _, _, step, entry in sorted(pairs, key=lambda p: p[:4])]

    def eviction_order(self) -> list[tuple[int, int]]:
        """(entry id, step) pairs, the first to leave first."""
        with self._ready():
            return [(entry.id, step) for entry, step in self._order(self._entries())]

    def _maintain(self, force: bool = False) -> set[int]:
        """Expire and evict (when this process maintains the cache, at most every `sweep_seconds`);
        returns the ids of the entries dropped whole (none yet when the sweep runs in the background)."""
        if not self.maintains:
            return set()
        sweep = self._vectors.sweep_seconds if self.config.sweep_seconds is None else self.config.sweep_seconds
        if not force and sweep and time.monotonic() - self._swept_at < sweep:
            return set()
        self._swept_at = time.monotonic()
        if self._vectors.shared and sweep:
            self._sweep_in_background()
            return set()
        return self._sweep(self._vectors.entries())

    def _sweep_in_background(self, evict: bool = True) -> None:
        """A shared store's sweep, off the caller's path: listing every entry scans the collection (about
        15 s for 100k entries in Milvus Lite), which a lookup must not wait for, nor hold the lock
        through. The listing runs without the lock; the eviction, with it, from that listing (entries
        stored meanwhile wait for the next sweep; a use counted meanwhile may be overwritten, as
        between two clients already). One sweep at a time. `evict=False` only refreshes the listing
        the Caches panel and `eviction_order` read."""
        if self._sweeper is not None and self._sweeper.is_alive():
            return
        vectors = self._vectors

        def sweep() -> None:
            try:
                entries = vectors.entries()
                with self._lock:
                    if self._vectors is vectors and not self.unavailable:
                        if evict:
                            self._sweep(entries)
                        else:
                            self._listing = (time.monotonic(), entries)
            except StoreUnavailable as error:
                with self._lock:
                    if self._vectors is vectors and not self.unavailable:
                        self._turn_off(error)

        self._sweeper = threading.Thread(target=sweep, name="approximate-cache-sweep", daemon=True)
        self._sweeper.start()

    def wait_for_sweep(self, timeout: float | None = None) -> None:
        """Until a background sweep in progress is done (tests, shutdown)."""
        sweeper = self._sweeper
        if sweeper is not None:
            sweeper.join(timeout)

    def _sweep(self, entries: list[Entry]) -> set[int]:
        gone: dict[int, Entry] = {}
        if self.config.ttl_seconds:
            oldest = self._clock() - self.config.ttl_seconds
            gone = {e.id: e for e in entries if e.created < oldest}
        live = [e for e in entries if e.id not in gone]
        total = sum(e.bytes for e in live)
        trimmed: dict[int, Entry] = {}
        files: list[str] = [item.file for e in gone.values() for item in e.items.values()]
        if total > self.config.max_bytes:
            for entry, step in self._order(live):
                if total <= self.config.max_bytes:
                    break
                item = entry.items.pop(step)
                files.append(item.file)
                total -= item.bytes
                if not entry.items:
                    total -= entry.store_bytes
                    gone[entry.id] = entry
                    trimmed.pop(entry.id, None)
                else:
                    trimmed[entry.id] = entry
        for entry in trimmed.values():
            self._vectors.update(entry)
        if gone:
            self._vectors.delete(list(gone.values()))
        for name in files:  # after the store: a reader that still finds the entry finds its file, or drops it
            (self.folder / name).unlink(missing_ok=True)
        if self._vectors.shared:
            self._sweep_orphans(entries)
        self._listing = (time.monotonic(), [e for e in entries if e.id not in gone])
        return set(gone)

    def _sweep_orphans(self, entries: list[Entry]) -> None:
        """A shared folder: delete latent files no entry names, once older than a store takes to commit."""
        named = {item.file for e in entries for item in e.items.values()}
        oldest = time.time() - ORPHAN_GRACE_SECONDS
        remove_stale_temporaries(self.folder)
        try:
            paths = list(self.folder.iterdir())
        except OSError:
            return
        for path in paths:
            try:
                if _is_latent_file(path.name) and path.name not in named and path.stat().st_mtime < oldest:
                    path.unlink()
            except OSError:
                pass

    def _entries(self) -> list[Entry]:
        """Every entry: fresh from a local store (or a shared one with `sweep_seconds` 0). A shared store
        answers from its last listing and, once that is `sweep_seconds` old, lists again in the
        background: a full listing takes seconds (15 s at 100k entries in Milvus Lite) and the caller
        holds the lock every lookup needs. Only a process that never listed waits, once."""
        if not self._vectors.shared:
            return self._vectors.entries()
        sweep = self._vectors.sweep_seconds if self.config.sweep_seconds is None else self.config.sweep_seconds
        if not sweep or self._listing is None:
            self._listing = (time.monotonic(), self._vectors.entries())
        elif time.monotonic() - self._listing[0] >= sweep:
            self._sweep_in_background(evict=False)
        return self._listing[1]

    # -- the Caches panel ---------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        with self._ready():
            if self.unavailable:
                return []
            try:
                return list(self._entries())
            except StoreUnavailable as error:
                self._turn_off(error)
                return []

    def entry_ids(self) -> list[int]:
        return sorted(entry.id for entry in self.entries())

    def clear(self) -> None:
        """Every entry of every namespace, and their latent files."""
        with self._ready():
            if self.unavailable:
                return
            try:
                entries = self._vectors.entries()
                self._vectors.clear()
            except StoreUnavailable as error:
                self._turn_off(error)
                return
            for entry in entries:
                self._remove_files(entry)
            self._listing = None

    def stats(self) -> CacheStats:
        """Entries are stored latents (one per prompt and K); `max_entries` is 0: the limit is bytes."""
        with self._ready():
            entries = []
            if not self.unavailable:
                try:
                    self._maintain()
                    entries = self._entries()
                except StoreUnavailable as error:
                    self._turn_off(error)
            items = sum(len(e.items) for e in entries)
            return CacheStats(self.name, self.policy, items, 0, sum(e.bytes for e in entries), self.hits, self.misses, self.seconds_saved)


def partition_key(*parts) -> str:
    """A short, stable, file-name-safe name for everything that must match for a latent to be reused."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
