"""A1111's "Model hash": the first 10 hex digits of the file's sha256, cached by path, size and mtime."""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from pipelines.atomic import remove_stale_temporaries, write_text_atomically

_lock = threading.Lock()


def file_sha256(path: Path, chunk: int = 8 * 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_hash(path: Path, cache_file: Path) -> str:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    with _lock:
        try:
            known = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            known = {}
        if key in known:
            return known[key][:10]
    full = file_sha256(path)
    with _lock:
        try:
            known = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            known = {}
        known[key] = full
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(cache_file.parent)  # a write of this file killed half-way
        write_text_atomically(cache_file, json.dumps(known, indent=1))
    return full[:10]
