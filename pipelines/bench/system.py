"""Process and OS helpers for the benchmarks: RSS readings, page-cache dropping, an object census."""
from __future__ import annotations

import ctypes
import datetime as dt
import ctypes.util
import gc
import os
import sys
from collections import Counter
from pathlib import Path

import psutil
import torch


def rss_bytes(collect: bool = True) -> int:
    """The process RSS, after a full garbage collection unless told otherwise."""
    if collect:
        gc.collect()
    return psutil.Process(os.getpid()).memory_info().rss


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def drop_page_cache(folder: Path) -> bool:
    """Ask the OS to forget the cached pages of every file under `folder` (best effort, no root needed).

    Dirty pages cannot be dropped, so each file is fsynced first. Returns False where the platform
    has no posix_fadvise (the next load then reads from the page cache).
    """
    if not hasattr(os, "posix_fadvise"):
        return False
    ok = True
    for path in Path(folder).rglob("*"):
        if not path.is_file():
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            ok = False
            continue
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            ok = False
        finally:
            os.close(fd)
    return ok


def malloc_trim() -> bool:
    """Return freed heap pages to the OS (glibc only); tells allocator retention from a real leak."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


def census() -> dict:
    """Live objects by type name, plus the count and bytes of live torch tensors (CPU and device)."""
    gc.collect()
    types: Counter = Counter()
    tensors = tensor_bytes = 0
    for obj in gc.get_objects():
        types[type(obj).__qualname__] += 1
        try:
            if isinstance(obj, torch.Tensor) and not obj.is_meta:
                tensors += 1
                tensor_bytes += obj.numel() * obj.element_size()
        except Exception:  # noqa: BLE001 - exotic tensor subclasses; the census is a diagnostic
            pass
    return {"types": types, "tensors": tensors, "tensor_bytes": tensor_bytes, "objects": sum(types.values())}


def census_growth(before: dict, after: dict, top: int = 8) -> list[tuple[str, int]]:
    grown = [(name, after["types"][name] - before["types"].get(name, 0)) for name in after["types"]]
    grown = [item for item in grown if item[1] > 0]
    return sorted(grown, key=lambda item: -item[1])[:top]


def print_suite_header(out, title: str, device) -> None:
    """The first lines of a suite's report: what ran, when, on what, and how busy the machine was."""
    from pipelines.bench.tables import heading

    load = load_average()
    print(heading(title), file=out)
    print(f"  {dt.datetime.now().astimezone().isoformat(timespec='seconds')} · device {device} · torch {torch.__version__}"
          + (f" · load average {load[0]:.2f}" if load else ""), file=out, flush=True)
