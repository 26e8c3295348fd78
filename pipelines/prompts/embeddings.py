"""Textual-inversion embeddings from `models/embeddings/`, used by file name in the prompt as in A1111.

A file's stem is its trigger word (`models/embeddings/badhands.safetensors` -> `badhands`). Formats:
A1111's safetensors (`emb_params`), SDXL's (`clip_l` and `clip_g`), A1111's pickle
(`string_to_param: {"*": tensor}`) and diffusers' (`{"<token>": tensor}`); `.pt`/`.bin` are pickles
and load only with the pickle setting on, and then with `torch.load(weights_only=True)`.

At encode time the trigger word becomes as many placeholder tokens as the embedding has vectors,
and the token-embedding layer's output is overwritten there (A1111's "fixes"): the tokenizer and
the text encoder are never changed. Infotext: `TI hashes: "name: <first 12 hex of sha256>, ..."`.
"""
from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelines.errors import InvalidRequest
from pipelines.hashes import file_sha256

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".bin")


@dataclass(frozen=True)
class Embedding:
    name: str
    path: Path
    vectors: dict[str, torch.Tensor]  # "clip_l" (SD 1.5, SDXL's first encoder) / "clip_g" (SDXL's second) -> (n, width)
    shorthash: str

    def for_encoder(self, key: str, width: int) -> torch.Tensor:
        """The vectors for one encoder ("clip_l" / "clip_g"), checked against its width."""
        tensor = self.vectors.get(key)
        if tensor is None and len(self.vectors) == 1:
            tensor = next(iter(self.vectors.values()))
        if tensor is None or tensor.shape[-1] != width:
            sizes = ", ".join(f"{k} {v.shape[-1]}" for k, v in self.vectors.items())
            raise InvalidRequest(f"The embedding {self.path.name} does not fit this model: its vectors are {sizes} wide, "
                                 f"the text encoder ({key}) takes {width} (an SD 1.5 embedding on SDXL, or the reverse?).")
        return tensor

    @property
    def count(self) -> int:
        return max(t.shape[0] for t in self.vectors.values())


def read_embedding(path: Path, allow_pickle: bool) -> Embedding:
    """Load one file; InvalidRequest naming the file when it cannot be used."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise InvalidRequest(f"The embedding {path.name} is a pickle file ({suffix}); turn on the pickle setting (allow_pickle) "
                             "to load it, or convert it to .safetensors.")
    try:
        if suffix in SAFE_SUFFIXES:
            from safetensors.torch import load_file

            data = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same sentence
        raise InvalidRequest(f"The embedding {path.name} could not be read ({type(error).__name__}: {error}).") from error
    vectors = _vectors(data)
    if not vectors:
        raise InvalidRequest(f"The embedding {path.name} holds no textual-inversion vectors (expected emb_params, clip_l/clip_g, "
                             "string_to_param or one tensor).")
    return Embedding(path.stem, path, vectors, file_sha256(path)[:12])


def _vectors(data) -> dict[str, torch.Tensor]:
    if not isinstance(data, dict):
        return {}
    if "clip_l" in data or "clip_g" in data:  # SDXL
        found = {key: data[key] for key in ("clip_l", "clip_g") if isinstance(data.get(key), torch.Tensor)}
    elif isinstance(data.get("emb_params"), torch.Tensor):  # A1111 safetensors
        found = {"clip_l": data["emb_params"]}
    elif isinstance(data.get("string_to_param"), dict) and data["string_to_param"]:  # A1111 .pt
        found = {"clip_l": next(iter(data["string_to_param"].values()))}
    else:  # diffusers: {"<token>": tensor}
        tensors = [value for value in data.values() if isinstance(value, torch.Tensor)]
        found = {"clip_l": tensors[0]} if len(tensors) == 1 else {}
    return {key: (t if t.ndim == 2 else t.reshape(1, -1)).detach().float() for key, t in found.items()}


@dataclass
class EmbeddingLibrary:
    """The embeddings folder: names scanned on demand, files loaded once (until they change)."""

    folder: Path
    allow_pickle: bool = False
    _loaded: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def files(self) -> dict[str, Path]:
        if not self.folder.is_dir():
            return {}
        paths = [p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in SAFE_SUFFIXES + PICKLE_SUFFIXES]
        found: dict[str, Path] = {}
        for path in sorted(paths, key=lambda p: (p.suffix.lower() not in SAFE_SUFFIXES, str(p))):
            found.setdefault(path.stem, path)  # a name clash: the safetensors file wins, then the first path
        return found

    def used_in(self, *texts: str) -> list[Embedding]:
        """The embeddings whose names appear in the texts as words of their own (case-insensitive, as CLIP reads)."""
        files = self.files()
        if not files:
            return []
        names = [name for name in files if any(_name_pattern(name).search(text) for text in texts)]
        return [self._load(files[name]) for name in names]

    def listing(self) -> dict:
        """A1111's `/sdapi/v1/embeddings` body: usable files under "loaded", unreadable ones under "skipped"."""
        loaded, skipped = {}, {}
        for name, path in self.files().items():
            entry = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None, "vectors": None}
            try:
                embedding = self._load(path)
            except InvalidRequest:
                skipped[name] = entry
                continue
            loaded[name] = entry | {"shape": max(t.shape[-1] for t in embedding.vectors.values()), "vectors": embedding.count}
        return {"loaded": loaded, "skipped": skipped}

    def _load(self, path: Path) -> Embedding:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = read_embedding(path, self.allow_pickle)
            return self._loaded[key]


def _name_pattern(name: str) -> re.Pattern:
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)


def split_on_embeddings(text: str, embeddings: list[Embedding]) -> list[str | Embedding]:
    """The text with each trigger word replaced by its Embedding (longest names first)."""
    if not embeddings:
        return [text]
    by_name = {e.name.lower(): e for e in embeddings}
    pattern = re.compile("|".join(f"(?<![\\w-]){re.escape(name)}(?![\\w-])" for name in sorted(by_name, key=len, reverse=True)),
                         re.IGNORECASE)
    pieces: list[str | Embedding] = []
    start = 0
    for match in pattern.finditer(text):
        pieces += [text[start:match.start()], by_name[match.group(0).lower()]]
        start = match.end()
    return pieces + [text[start:]]


def ti_hashes(embeddings: list[Embedding]) -> str | None:
    """The infotext value: `name: hash, ...` (A1111 drops ':' and ',' from names)."""
    return ", ".join(f"{e.name.replace(':', '').replace(',', '')}: {e.shorthash}" for e in embeddings) or None


@contextmanager
def vectors_at(text_encoder, fixes: list[tuple[int, int, torch.Tensor]]):
    """Overwrite the token-embedding output at (chunk, offset) with vectors while the encoder runs."""
    if not fixes:
        yield
        return

    def replace(_module, _inputs, output):
        output = output.clone()
        for row, offset, vectors in fixes:
            output[row, offset:offset + vectors.shape[0]] = vectors.to(output.device, output.dtype)
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()
