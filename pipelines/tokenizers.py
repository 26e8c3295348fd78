"""CLIP tokenizers built offline.

Single-file checkpoints carry no tokenizer, and nothing can be downloaded. The CLIP BPE vocabulary
ships inside the `open-clip-torch` wheel (installed without its dependencies, so no torchvision);
the CLIP vocabulary is a deterministic function of that merge list, as in OpenAI's tokenizer:
256 byte symbols, the same with `</w>`, one entry per merge, then the two special tokens.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

from transformers import CLIPTokenizer

from pipelines.errors import ModelLoadError

VOCAB_SIZE = 49408
MERGE_COUNT = VOCAB_SIZE - 256 * 2 - 2  # 48894


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def bpe_vocabulary_file() -> Path:
    spec = importlib.util.find_spec("open_clip")  # finds the package without importing it (it needs torchvision)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "No CLIP tokenizer found: install the vocabulary with `pip install --no-deps open-clip-torch==3.3.0` "
            "(setup.sh does this), or use a diffusers model folder that has a tokenizer/ subfolder."
        )
    path = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise ModelLoadError(f"The CLIP vocabulary file is missing: {path}. Reinstall open-clip-torch with --no-deps.")
    return path


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(bpe_vocabulary_file(), "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 1 + MERGE_COUNT]  # line 0 is a version header
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(vocab)}, merges


def build_clip_tokenizer(pad_token: str = "<|endoftext|>", max_length: int = 77) -> CLIPTokenizer:
    """The tokenizer of SD's CLIP ViT-L text encoder; SDXL's second (OpenCLIP bigG) pads with '!'."""
    vocab, merges = clip_vocab_and_merges()
    tokenizer = CLIPTokenizer(vocab=dict(vocab), merges=[tuple(m.split()) for m in merges], pad_token=pad_token)
    tokenizer.model_max_length = max_length
    return tokenizer
