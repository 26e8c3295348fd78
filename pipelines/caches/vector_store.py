"""Where the approximate cache keeps its prompt vectors and entry metadata: a small interface, two stores.

- `FaissStore` (`pipelines.caches.faiss_store`): the embedded default, one folder on this machine
  (a faiss HNSW index per partition, the embeddings as safetensors, `manifest.json`).
- `MilvusStore` (`pipelines.caches.milvus_store`): Milvus through pymilvus; `./cache.db` is Milvus
  Lite in a local folder, `http://host:19530` a server every worker and machine can share.

A store holds the vectors, the partition keys (namespace + partition), and each entry's
counters (uses, last use, K steps and their files); it never reads or writes latents. The latents
are files in the cache folder, written by `ApproximateCache` before the vector is inserted and
checked by hash when read; eviction and the time-to-live are the cache's too (one place for both
stores). A store that cannot be reached raises `StoreUnavailable`; the cache then turns itself off
for the run and says why.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


class StoreUnavailable(RuntimeError):
    """The vector store cannot be used (unreachable, not installed, refused): the cache goes off, generation goes on."""


@dataclass
class Item:
    """One kept latent: the file under the cache folder, its size and hash, and how often it served."""

    file: str
    bytes: int
    uses: int = 1  # the generation that stored it counts as one use
    last_used: float = 0.0
    sha256: str = ""  # empty in entries written before hashes were kept: then only the size and header are checked


@dataclass
class Entry:
    """One stored prompt: its partition keys and its latents by step (the vector stays in the store)."""

    id: int
    partition: str
    dim: int
    total_steps: int
    created: float
    step_seconds: float
    items: dict[int, Item] = field(default_factory=dict)  # completed steps -> item
    namespace: str = ""  # "" = the default (single-user) namespace; else a hash of the user or API key
    store_bytes: int = 0  # what the store keeps on the cache's disk for it besides the latents (faiss: the embedding file)

    @property
    def bytes(self) -> int:
        return self.store_bytes + sum(item.bytes for item in self.items.values())


class VectorStore(ABC):
    """The vectors and metadata of the approximate cache. Callers hold the cache's lock around every call,
    except `entries()` of a shared store: the cache's background sweep lists without it (a listing of a
    large Milvus collection takes seconds), so a shared store's `entries()` must be safe alongside other calls.

    `shared`: other processes may write the same store at the same time (the cache then spares young
    files it does not know yet, and checks latent files only when it reads them).
    """

    shared: bool = False
    sweep_seconds: float = 0.0  # how often the cache lists every entry for eviction and expiry (0: every time)

    @abstractmethod
    def open(self) -> list[str]:
        """Connect or read; returns what had to be dropped or repaired, in words. Raises StoreUnavailable."""

    @abstractmethod
    def new_id(self) -> int:
        """An id no other entry has (nor will get from another client of a shared store)."""

    @abstractmethod
    def insert(self, entry: Entry, vector: np.ndarray) -> None:
        """The commit point: after it returns, searches may find the entry (its latent files already exist)."""

    @abstractmethod
    def search(self, namespace: str, partition: str, vector: np.ndarray, skip: set[int] = frozenset()) -> tuple[Entry, float] | None:
        """The nearest entry (by inner product of unit vectors: cosine similarity) in that namespace and
        partition, not in `skip`, with its similarity; None when there is none."""

    @abstractmethod
    def update(self, entry: Entry) -> None:
        """Write an entry's items back (uses counted, or items dropped; an entry with no items is deleted instead)."""

    @abstractmethod
    def delete(self, entries: list[Entry]) -> None:
        """Remove these entries (not their latent files: the cache deletes those)."""

    @abstractmethod
    def entries(self) -> list[Entry]:
        """Every entry, all namespaces, without vectors (eviction, expiry, the Caches panel)."""

    def own_files(self) -> set[str]:
        """Names in the cache folder that belong to the store (the cache must not delete them as orphans)."""
        return set()

    def clear(self) -> None:
        self.delete(self.entries())

    def close(self) -> None:
        pass

    @abstractmethod
    def describe(self) -> str:
        """For messages: which store, where."""


def open_store(uri: str, folder, config) -> VectorStore:
    """`uri` empty: the embedded faiss store in `folder`; a Milvus URI (`*.db`, `http(s)://`, `tcp://`,
    `unix:`): a Milvus store. pymilvus is imported only in the second case."""
    uri = (uri or "").strip()
    if not uri:
        from pipelines.caches.faiss_store import FaissStore

        return FaissStore(folder, config.hnsw_neighbours, config.search_depth)
    problem = uri_problem(uri)
    if problem:
        raise StoreUnavailable(problem)
    from pipelines.caches.milvus_store import MilvusStore

    return MilvusStore(uri, config.hnsw_neighbours, config.search_depth)


def uri_problem(uri: str) -> str | None:
    """What is wrong with an `approx_cache_uri` (None when it is empty or a Milvus URI)."""
    uri = (uri or "").strip()
    if not uri or uri.endswith(".db") or uri.startswith(("http://", "https://", "tcp://", "unix:")):
        return None
    return (f"the approximate cache URI {uri!r} is not a Milvus URI: use a file ending in .db (Milvus Lite, "
            "e.g. ./cache.db), http://host:19530 (a Milvus server), or leave it empty for the embedded faiss index")
