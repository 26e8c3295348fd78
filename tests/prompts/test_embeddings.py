"""Textual-inversion embeddings: file formats, the trigger word in the prompt, wrong sizes, pickles."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pipelines.errors import InvalidRequest
from pipelines.prompts.embeddings import EmbeddingLibrary, read_embedding, ti_hashes
from pipelines.prompts.encode import encode_weighted, tokenize_chunks
from pipelines.prompts.syntax import parse_prompt

CPU = torch.device("cpu")


def width(pipe, name="text_encoder") -> int:
    return getattr(pipe, name).get_input_embeddings().embedding_dim


def test_the_trigger_word_becomes_the_vectors(tmp_path, sd15):
    torch.manual_seed(1)
    save_file({"emb_params": torch.randn(3, width(sd15))}, tmp_path / "shiny.safetensors")
    library = EmbeddingLibrary(tmp_path)
    used = library.used_in("a (shiny:1.2) cat", "")
    assert [e.name for e in used] == ["shiny"] and used[0].count == 3
    assert library.used_in("a shinyness cat") == []
    (chunk,) = tokenize_chunks(sd15.tokenizer, parse_prompt("a (shiny:1.2) cat"), embeddings=used)
    assert chunk.length == 5 and chunk.fixes == ((2, used[0]),) and chunk.weights[2:5] == (1.2, 1.2, 1.2)
    with_ti = encode_weighted(sd15, "a shiny cat", "", CPU, 1, False, sdxl=False, embeddings=used)["prompt_embeds"]
    without = encode_weighted(sd15, "a shiny cat", "", CPU, 1, False, sdxl=False)["prompt_embeds"]
    assert with_ti.shape == without.shape and not torch.allclose(with_ti, without)
    again = encode_weighted(sd15, "a shiny cat", "", CPU, 1, False, sdxl=False, embeddings=used)["prompt_embeds"]
    assert torch.equal(with_ti, again), "the hook is removed after each encode"
    assert ti_hashes(used) == f"shiny: {used[0].shorthash}" and len(used[0].shorthash) == 12


def test_sdxl_uses_clip_l_and_clip_g(tmp_path, sdxl):
    save_file({"clip_l": torch.randn(2, width(sdxl)), "clip_g": torch.randn(2, width(sdxl, "text_encoder_2"))}, tmp_path / "xl.safetensors")
    used = EmbeddingLibrary(tmp_path).used_in("xl portrait")
    embeds = encode_weighted(sdxl, "xl portrait", "", CPU, 1, True, sdxl=True, embeddings=used)
    plain = encode_weighted(sdxl, "xl portrait", "", CPU, 1, True, sdxl=True)
    assert not torch.allclose(embeds["prompt_embeds"], plain["prompt_embeds"])
    assert not torch.allclose(embeds["pooled_prompt_embeds"], plain["pooled_prompt_embeds"])


def test_an_embedding_of_the_wrong_size_names_the_file(tmp_path, sdxl):
    save_file({"emb_params": torch.randn(1, 7)}, tmp_path / "tiny.safetensors")
    used = EmbeddingLibrary(tmp_path).used_in("tiny")
    with pytest.raises(InvalidRequest, match=r"tiny\.safetensors.*7 wide"):
        encode_weighted(sdxl, "a tiny cat", "", CPU, 1, False, sdxl=True, embeddings=used)


def test_pickles_need_the_setting_and_load_weights_only(tmp_path):
    torch.save({"string_to_param": {"*": torch.randn(2, 8)}, "name": "old"}, tmp_path / "old.pt")
    with pytest.raises(InvalidRequest, match=r"old\.pt.*pickle"):
        EmbeddingLibrary(tmp_path).used_in("old")
    embedding = read_embedding(tmp_path / "old.pt", allow_pickle=True)
    assert embedding.vectors["clip_l"].shape == (2, 8)
    torch.save({"<cat-toy>": torch.randn(8)}, tmp_path / "toy.bin")  # diffusers' format: one vector
    assert read_embedding(tmp_path / "toy.bin", allow_pickle=True).count == 1


def test_an_unreadable_file_is_named(tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InvalidRequest, match=r"broken\.safetensors"):
        EmbeddingLibrary(tmp_path).used_in("broken")


def test_an_embedding_is_never_split_across_chunks(tmp_path, sd15):
    save_file({"emb_params": torch.randn(4, width(sd15))}, tmp_path / "wide.safetensors")
    used = EmbeddingLibrary(tmp_path).used_in("wide")
    text = " ".join(["cat"] * 73) + " wide"
    chunks = tokenize_chunks(sd15.tokenizer, parse_prompt(text), embeddings=used)
    assert [c.length for c in chunks] == [73, 4] and chunks[1].fixes == ((1, used[0]),)


def test_the_a1111_listing(tmp_path):
    save_file({"clip_l": torch.randn(2, 8), "clip_g": torch.randn(2, 12)}, tmp_path / "xl.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"nope")
    torch.save({"string_to_param": {"*": torch.randn(1, 8)}}, tmp_path / "old.pt")
    listing = EmbeddingLibrary(tmp_path).listing()
    assert listing["loaded"] == {"xl": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 12, "vectors": 2}}
    assert set(listing["skipped"]) == {"broken", "old"}  # unreadable; a pickle with the setting off
    assert EmbeddingLibrary(tmp_path / "missing").listing() == {"loaded": {}, "skipped": {}}
