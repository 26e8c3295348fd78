"""A1111's token counter: what it counts (known answers on the real CLIP vocabulary), and the manager's count per model
from the tokenizer files alone."""
from __future__ import annotations

import pytest
import torch

from pipelines.families import Family
from pipelines.prompts.embeddings import Embedding
from pipelines.prompts.tokens import count_tokens
from pipelines.tokenizers import build_clip_tokenizer


@pytest.fixture(scope="module")
def clip():
    return build_clip_tokenizer()


def label(tokenizer, text: str, steps: int = 20, family: Family = Family.SD15, embeddings=()) -> str:
    return count_tokens(tokenizer, family, text, steps, list(embeddings)).label()


def test_counts_as_a1111_shows_them(clip):
    assert label(clip, "") == "0/75"
    assert label(clip, "a red cat") == "3/75"
    assert label(clip, "a (red:1.3) [cat]") == "3/75", "weights and brackets are not tokens"
    assert label(clip, "a red cat <lora:film_grain:0.8>") == "3/75", "LoRA tags are not read by the text encoder"
    assert label(clip, "a red cat, " * 18 + "dog") == "73/75"
    assert label(clip, "a red cat, " * 20) == "80/150", "past 75 tokens the prompt takes a second chunk"
    assert label(clip, "a red cat BREAK dog") == "76/150", "BREAK fills its chunk: 75 + 1"


def test_prompt_editing_shows_the_longest_text(clip):
    assert label(clip, "a [red cat:very big fluffy blue dog:0.5]") == "6/75"
    assert label(clip, "[a|b c d e]") == "4/75"


def test_a_textual_inversion_counts_its_vectors(clip):
    embedding = Embedding("glowtoken", "glowtoken.safetensors", {"clip_l": torch.zeros(5, 8)}, "0" * 12)
    assert label(clip, "a glowtoken cat", embeddings=[embedding]) == "7/75"


def test_flux_counts_t5_tokens_against_512(tiny_pipes):
    tokenizer = tiny_pipes["flux"].tokenizer_2
    count = count_tokens(tokenizer, Family.FLUX, "a portrait photo", 20)
    assert count.encoder == "T5" and count.limit == 512 and 0 < count.tokens < 10 and not count.over
    long = count_tokens(tokenizer, Family.FLUX, "a portrait photo " * 200, 20)
    assert long.over and long.label().endswith("/512")


def test_the_manager_counts_from_the_model_files_without_loading_it(make_manager, shared_models_dir):
    manager = make_manager(shared_models_dir)
    assert manager.prompt_tokens("tiny-sd15", "a red cat", 20).label() == "3/75"
    assert manager.prompt_tokens("tiny-sdxl", "a red cat, " * 20, 20).label() == "80/150"
    assert manager.prompt_tokens("tiny-flux", "a portrait photo", 20).encoder == "T5"
    assert not manager.cache.records(), "counting loaded no model"
    assert manager.prompt_tokens("no-such-model", "a red cat") is None


def test_a_flux_folder_without_its_t5_tokenizer_counts_nothing_and_says_nothing(make_manager, model_zoo, tmp_path):
    import shutil

    from tests.tiny_models import copy_model

    folder = copy_model(model_zoo["flux"], tmp_path / "models", "broken-flux")
    shutil.rmtree(folder / "tokenizer_2")
    assert make_manager(tmp_path / "models").prompt_tokens("broken-flux", "a portrait") is None
