"""LoRA files on disk: finding them, telling their family from the header, hashing, and a RAM memo.

Nothing here loads a model. The family comes from the safetensors header alone (key names and
shapes), so listing a folder of LoRAs stays instant; a truncated or corrupt file is caught there too.
"""
from __future__ import annotations

import difflib
import hashlib
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from pipelines.checkpoints import read_safetensors_header
from pipelines.errors import ModelLoadError
from pipelines.families import Family

LORA_FOLDERS = ("Lora", "loras")  # A1111's folder, then the other common spelling (matched case-insensitively)

# Key fragments that only one family's LoRAs carry (kohya / A1111, diffusers/PEFT, ComfyUI, BFL layouts).
FLUX_MARKERS = ("double_blocks", "single_blocks", "single_transformer_blocks", "lora_transformer_", "transformer.transformer_blocks",
                "transformer.x_embedder", "context_embedder", "img_attn", "txt_attn")
SDXL_MARKERS = ("add_embedding", "up_blocks.0.attentions", "up_blocks_0_attentions",
                "input_blocks_4_1", "input_blocks.4.1", "output_blocks_0_1", "output_blocks.0.1")
SD15_MARKERS = ("down_blocks.0.attentions", "down_blocks_0_attentions", "up_blocks.3.attentions", "up_blocks_3_attentions",
                "input_blocks_1_1", "input_blocks.1.1", "output_blocks_11_1", "output_blocks.11.1")
# Cross-attention context width of the real models, read from the attn2 to_k input width.
CONTEXT_WIDTHS = {768: Family.SD15, 2048: Family.SDXL}


@dataclass(frozen=True)
class LoraEntry:
    name: str  # the file stem, what `<lora:name:w>` refers to
    path: Path
    family: Family | None
    layout: str  # "kohya", "diffusers", or "unknown"
    size_bytes: int
    text_encoder: bool  # carries text-encoder weights (then the encoded prompt depends on it)
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None

    def unusable_with(self, family: Family) -> str | None:
        """Why this LoRA cannot be applied to a model of `family`; None when it can."""
        if self.problem:
            return self.problem
        if self.family is not family:
            return f"{self.path.name} is a {self.family.spec.label} LoRA; the model is {family.spec.label}."
        return None


def header_keys(path: Path) -> dict:
    """The tensor entries of a safetensors header (validated: a damaged file raises ModelLoadError naming it)."""
    return read_safetensors_header(path)


def detect_family(header: dict) -> tuple[Family | None, str]:
    """(family, layout) from the key names and shapes of a LoRA; family None when nothing tells."""
    keys = list(header)
    layout = "kohya" if any(k.startswith("lora_") or ".lora_down." in k for k in keys) else (
        "diffusers" if any(".lora_A." in k or ".lora_B." in k or ".lora.down." in k for k in keys) else "unknown")

    def has(markers) -> bool:
        return any(marker in key for key in keys for marker in markers)

    if has(FLUX_MARKERS):
        return Family.FLUX, layout
    # The text encoders tell first: SDXL has two ("te1"/"te2", "text_encoder_2"), SD 1.5 one ("lora_te_").
    if has(("lora_te1_", "lora_te2_", "text_encoder_2.")):
        return Family.SDXL, layout
    if any(k.startswith(("lora_te_", "text_encoder.")) for k in keys):
        return Family.SD15, layout
    if has(SDXL_MARKERS):
        return Family.SDXL, layout
    if has(SD15_MARKERS):
        return Family.SD15, layout
    for key in keys:  # a UNet-only file: the cross-attention context width, 768 (SD 1.5) or 2048 (SDXL)
        if "attn2" in key and "to_k" in key and ("lora_down" in key or "lora_A" in key):
            shape = header[key].get("shape") or []
            if len(shape) == 2 and shape[1] in CONTEXT_WIDTHS:
                return CONTEXT_WIDTHS[shape[1]], layout
    return None, layout


def inspect_lora(path: Path, name: str) -> LoraEntry:
    size = path.stat().st_size
    try:
        header = header_keys(path)
    except ModelLoadError as error:
        return LoraEntry(name, path, None, "unknown", size, False, str(error))
    family, layout = detect_family(header)
    text_encoder = any(k.startswith(("lora_te", "text_encoder", "te1.", "te2.", "te.")) for k in header)
    problem = None
    if layout == "unknown":
        problem = f"{path.name} holds no LoRA weights (no lora_down/lora_up or lora_A/lora_B tensors)."
    elif family is None:
        problem = f"{path.name}: cannot tell from its keys whether it is an SD 1.5, SDXL or FLUX.1 LoRA."
    return LoraEntry(name, path, family, layout, size, text_encoder, problem)


def lora_folders(models_dir: Path) -> list[Path]:
    """`models/Lora` and `models/loras` (any capitalization), those that exist."""
    if not models_dir.is_dir():
        return []
    wanted = {name.lower() for name in LORA_FOLDERS}
    return sorted(p for p in models_dir.iterdir() if p.is_dir() and p.name.lower() in wanted)


def scan_loras(models_dir: Path) -> list[LoraEntry]:
    """Every `.safetensors` under the LoRA folders, named by file stem (a clash keeps the relative path)."""
    found: list[LoraEntry] = []
    for folder in lora_folders(models_dir):
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for filename in sorted(files):
                if filename.lower().endswith(".safetensors"):
                    path = Path(root) / filename
                    found.append(inspect_lora(path, path.stem))
    counts: dict[str, int] = {}
    for entry in found:
        counts[entry.name] = counts.get(entry.name, 0) + 1
    result = []
    for entry in found:
        if counts[entry.name] > 1:
            relative = entry.path.relative_to(models_dir).with_suffix("")
            entry = LoraEntry(str(relative).replace(os.sep, "/"), entry.path, entry.family, entry.layout,
                              entry.size_bytes, entry.text_encoder, entry.problem)
        result.append(entry)
    return result


def close_names(name: str, names: list[str], count: int = 5) -> list[str]:
    lowered = {n.lower(): n for n in names}
    matches = difflib.get_close_matches(name.lower(), list(lowered), n=count, cutoff=0.5)
    contained = [n for n in names if name.lower() in n.lower() and n.lower() not in matches]
    return [lowered[m] for m in matches] + contained[: max(count - len(matches), 0)]


# -- hashes ----------------------------------------------------------------------------------------

_hash_lock = threading.Lock()
_hashes: dict[tuple, str] = {}


def _file_key(path: Path) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def lora_hash(path: Path) -> str:
    """A1111's LoRA hash: sha256 of the bytes after the safetensors header (8 + N), first 12 hex digits.

    Memoized per path, size and modification time.
    """
    key = _file_key(path)
    with _hash_lock:
        if key in _hashes:
            return _hashes[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        handle.seek(8 + header_len)
        while block := handle.read(8 * 2**20):
            digest.update(block)
    value = digest.hexdigest()[:12]
    with _hash_lock:
        _hashes[key] = value
    return value


# -- the state-dict memo -----------------------------------------------------------------------------


class StateDictMemo:
    """LoRA state dicts kept in RAM (CPU tensors), LRU by total bytes: a repeat does not read the file again.

    Keyed by path, size and modification time, so a file replaced under the same name is read afresh.
    Callers get a shallow copy: diffusers' converters pop keys from the dict they are given.
    """

    def __init__(self, max_bytes: int = 2 * 2**30):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, tuple[dict, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, path: Path) -> tuple[dict, bool]:
        """(state dict copy, from_memo)."""
        key = _file_key(path)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return dict(self._items[key][0]), True
        state = read_state_dict(path)
        size = sum(t.numel() * t.element_size() for t in state.values())
        with self._lock:
            self.misses += 1
            self._items[key] = (state, size)
            while len(self._items) > 1 and sum(s for _, s in self._items.values()) > self.max_bytes:
                self._items.popitem(last=False)
        return dict(state), False

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def read_state_dict(path: Path) -> dict:
    """All tensors of a LoRA file on the CPU; a damaged file raises ModelLoadError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    header_keys(path)  # truncation and header damage, with the file's name in the message
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"LoRA {path.name} could not be read: {error.__class__.__name__}: {str(error)[:200]}") from error

