"""A1111's token counter: how many tokens a prompt takes of the text encoder's window, without loading the model.

SD 1.5 and SDXL read a prompt in 75-token chunks (`encode.tokenize_chunks`), so the counter shows the tokens
against the chunks they fill: "12/75", "80/150" (a BREAK or a phrase moved to the next chunk counts the rest of
its chunk, as A1111 counts). FLUX.1 reads the prompt with T5 up to 512 tokens: "40/512". As in A1111, the
LoRA tags do not count, textual inversions count their vectors, and with prompt editing the longest of the
texts the steps read is shown.

The tokenizer is the model's own (its folder's `tokenizer/`, `tokenizer_2/` for T5) or, for single files, the
bundled CLIP vocabulary the loader uses too; each is built once per model path.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from pipelines.families import Family
from pipelines.prompts.encode import token_count
from pipelines.prompts.schedule import prompt_schedule
from pipelines.prompts.syntax import flux_text

T5_LIMIT = 512  # FluxPipeline's max_sequence_length


@dataclass(frozen=True)
class TokenCount:
    tokens: int
    limit: int  # the chunks' length the tokens fill (75, 150, ...) or the encoder's window (T5: 512)
    encoder: str  # "CLIP" or "T5"

    @property
    def over(self) -> bool:
        """More tokens than the encoder reads (T5 only: CLIP prompts grow by chunks)."""
        return self.tokens > self.limit

    def label(self) -> str:
        return f"{self.tokens}/{self.limit}"


def count_tokens(tokenizer, family: Family, text: str, steps: int, embeddings: list = ()) -> TokenCount:
    """The counter for `text` as `family` reads it (the longest text of its prompt editing over `steps`)."""
    texts = [rendered for _, rendered in prompt_schedule(text or "", max(int(steps or 1), 1))]
    if family is Family.FLUX:
        tokens = max(len(tokenizer(flux_text(t)[0], truncation=False, add_special_tokens=False).input_ids) for t in texts)
        return TokenCount(tokens, T5_LIMIT, "T5")
    size = tokenizer.model_max_length - 2
    tokens = max(token_count(tokenizer, rendered, embeddings) for rendered in texts)
    return TokenCount(tokens, size * max(1, -(-tokens // size)), "CLIP")


def prompt_tokenizer(family: Family, model_format: str, path: Path, base_path: Path | None = None):
    """The tokenizer the model reads its prompt with (T5 for FLUX.1), built once per model path and format."""
    return _tokenizer(family, model_format, str(path), str(base_path) if base_path else "")


@functools.lru_cache(maxsize=16)
def _tokenizer(family: Family, model_format: str, path: str, base_path: str):
    from transformers import AutoTokenizer

    from pipelines.tokenizers import build_clip_tokenizer

    folder = Path(base_path or path)
    if family is Family.FLUX:
        return AutoTokenizer.from_pretrained(folder / "tokenizer_2", local_files_only=True)
    if model_format != "single-file" and (folder / "tokenizer").is_dir():
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    return build_clip_tokenizer()
