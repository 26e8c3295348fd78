"""ESRGAN weight files: telling what a file holds from its header, loading it, and a small memo.

`.safetensors` files are always read; the header alone (a few KB) tells the scale and size, so
listing `models/ESRGAN/` stays instant and a truncated file is caught before loading. `.pth`/`.pt`
files are pickles that can run code when loaded: they are refused unless `allow_pickle` is on, and
then read with `torch.load(weights_only=True)`. Real-ESRGAN's `.pth` files wrap the weights in
`params_ema` (preferred, as Real-ESRGAN does) or `params`.

Loaded nets are memoized per file (path, mtime, size) and device/dtype, so hires fix on a batch loads
the file once, and a file replaced on disk is read again. The memo keeps the last `MEMO_SIZE` nets
(an x4plus net is 67 MB in float32); `forget_loaded()` drops them.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.checkpoints import pickle_refusal, read_pickle_tensors, read_safetensors_header
from pipelines.errors import ModelLoadError
from pipelines.upscale.rrdbnet import RRDBConfig, RRDBNet, config_from_shapes, to_basicsr_names

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt")
ESRGAN_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
WRAPPERS = ("params_ema", "params", "state_dict", "model")  # training checkpoints keep the weights under one of these
MEMO_SIZE = 2


@dataclass(frozen=True)
class EsrganInfo:
    """What a file's header says: usable with `config`, or `problem` in words for the user."""

    config: RRDBConfig | None
    problem: str | None = None


def is_pickle(path: Path) -> bool:
    return path.suffix.lower() in PICKLE_SUFFIXES


def inspect_esrgan(path: Path, allow_pickle: bool = False) -> EsrganInfo:
    """The config of an ESRGAN file from its safetensors header, or the problem; never raises for bad files.

    Pickle files have no header to read without unpickling the whole file, so they are only checked
    against the pickle setting here; their layout is checked when they load.
    """
    if is_pickle(path):
        return EsrganInfo(None, None if allow_pickle else pickle_refusal(path))
    try:
        header = read_safetensors_header(path)
        config = config_from_shapes({k: v.get("shape", ()) for k, v in header.items()}, path.name)
    except ModelLoadError as error:
        return EsrganInfo(None, str(error))
    except OSError as error:
        return EsrganInfo(None, f"{path.name} cannot be read: {error.strerror or error}.")
    return EsrganInfo(config)


def read_state(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of an ESRGAN file (either layout, names as stored); ModelLoadError naming the file if unreadable."""
    if is_pickle(path):
        if not allow_pickle:
            raise ModelLoadError(pickle_refusal(path))
        return read_pickle_tensors(path, WRAPPERS)
    read_safetensors_header(path)  # a truncated or corrupt file gets its own message, naming it
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # safetensors raises its own error types for damaged data
        raise ModelLoadError(f"{path.name} is not a readable safetensors file: {str(error)[:200]}") from error


def build_esrgan(state: dict[str, torch.Tensor], filename: str) -> RRDBNet:
    """An RRDBNet holding `state` (either layout), in float32, eval mode; ModelLoadError if the layout differs."""
    state = to_basicsr_names(state, filename)
    config = config_from_shapes({k: tuple(v.shape) for k, v in state.items()}, filename)  # every key and shape
    with torch.device("meta"):
        net = RRDBNet(config)
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    return net.eval().requires_grad_(False)


class _Memo:
    """The last few loaded nets, keyed by file identity and placement; thread-safe, LRU."""

    def __init__(self, size: int):
        self.size = size
        self.entries: OrderedDict[tuple, RRDBNet] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple) -> RRDBNet | None:
        with self.lock:
            net = self.entries.get(key)
            if net is not None:
                self.entries.move_to_end(key)
            return net

    def put(self, key: tuple, net: RRDBNet) -> None:
        with self.lock:
            self.entries[key] = net
            self.entries.move_to_end(key)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


_memo = _Memo(MEMO_SIZE)


def load_esrgan(path: Path, allow_pickle: bool = False, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> RRDBNet:
    """The RRDBNet in `path`, on `device` in `dtype`, memoized per (path, mtime, size, device, dtype).

    Raises ModelLoadError naming the file: pickle refused, truncated or corrupt file, or keys/shapes
    that do not fit the RRDBNet (missing, unexpected, wrong shape).
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as error:
        raise ModelLoadError(f"{path.name} cannot be read: {error.strerror or error}.") from error
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(torch.device(device)), dtype)
    if (net := _memo.get(key)) is not None:
        return net
    started = time.perf_counter()
    net = build_esrgan(read_state(path, allow_pickle), path.name).to(device=device, dtype=dtype)
    c = net.config
    log.info("loaded upscaler %s (x%d, %d blocks, %d features) on %s in %.2f s",
             path.name, c.scale, c.num_block, c.num_feat, device, time.perf_counter() - started)
    _memo.put(key, net)
    return net


def forget_loaded() -> None:
    """Drop the memoized nets (frees their RAM/VRAM once no caller holds them)."""
    _memo.clear()
