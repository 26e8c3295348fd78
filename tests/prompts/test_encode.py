"""Chunked, weighted CLIP encoding on the tiny SD 1.5 and SDXL pipelines (CPU, seeded random weights)."""
from __future__ import annotations

import pytest
import torch

from pipelines.prompts.encode import apply_emphasis, encode_weighted, prompt_encode_timings, token_count, tokenize_chunks
from pipelines.prompts.syntax import parse_prompt

CPU = torch.device("cpu")
WORDS = "a red cat on a blue chair in a sunny garden oil painting detailed soft light".split()


def words(count: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(count))


def chunks_of(pipe, text: str, **kwargs):
    return tokenize_chunks(pipe.tokenizer, parse_prompt(text), **kwargs)


def test_150_tokens_make_two_chunks(sd15):
    text = words(150)
    assert len(sd15.tokenizer(text, add_special_tokens=False).input_ids) == 150
    chunks = chunks_of(sd15, text)
    assert [chunk.length for chunk in chunks] == [75, 75]
    assert all(len(chunk.ids) == 77 and chunk.ids[0] == sd15.tokenizer.bos_token_id and chunk.ids[-1] == sd15.tokenizer.eos_token_id
               for chunk in chunks)
    assert token_count(sd15.tokenizer, text) == 150


def test_comma_backtrack_moves_the_tail_after_a_late_comma(sd15):
    text = words(70) + ", " + words(20)  # the comma is token 71: the 4 tokens after it move on
    chunks = chunks_of(sd15, text)
    assert [chunk.length for chunk in chunks] == [71, 4 + 16]
    assert chunks[0].ids[71] == sd15.tokenizer.convert_tokens_to_ids(",</w>")
    assert [chunk.length for chunk in chunks_of(sd15, text, backtrack=0)] == [75, 16]
    early = words(40) + ", " + words(50)  # a comma 35 tokens back is too far: a plain cut
    assert [chunk.length for chunk in chunks_of(sd15, early)] == [75, 16]


def test_break_ends_the_chunk(sd15):
    chunks = chunks_of(sd15, "a red cat BREAK a blue chair")
    assert [chunk.length for chunk in chunks] == [3, 3]
    embeds = encode_weighted(sd15, "a red cat BREAK a blue chair", "", CPU, 1, True, sdxl=False)
    assert embeds["prompt_embeds"].shape[1] == 154
    assert embeds["negative_prompt_embeds"].shape == embeds["prompt_embeds"].shape


def test_weights_are_per_token(sd15):
    (chunk,) = chunks_of(sd15, "a (red:1.5) [cat]")
    assert chunk.weights[:5] == pytest.approx([1.0, 1.0, 1.5, 1 / 1.1, 1.0])


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_plain_short_prompt_gives_diffusers_embeddings_exactly(tiny_pipes, family):
    pipe = tiny_pipes[family]
    ours = encode_weighted(pipe, "a portrait photo, red", "ugly", CPU, 2, True, sdxl=family == "sdxl")
    with torch.no_grad():
        theirs = pipe.encode_prompt("a portrait photo, red", device=CPU, num_images_per_prompt=2,
                                    do_classifier_free_guidance=True, negative_prompt="ugly")
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    for name, tensor in zip(names, theirs):
        assert torch.equal(ours[name], tensor), name
    # Weight 1 spelled out is the plain prompt.
    spelled = encode_weighted(pipe, "(a portrait photo, red:1.0)", "ugly", CPU, 2, True, sdxl=family == "sdxl")
    assert torch.equal(spelled["prompt_embeds"], ours["prompt_embeds"])


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_long_prompt_is_chunked_not_truncated(tiny_pipes, family):
    pipe, sdxl_family = tiny_pipes[family], family == "sdxl"
    text = words(150)
    long = encode_weighted(pipe, text, "", CPU, 1, True, sdxl=sdxl_family)
    assert long["prompt_embeds"].shape[1] == 154
    assert long["negative_prompt_embeds"].shape == long["prompt_embeds"].shape  # padded with empty chunks
    with torch.no_grad():
        truncated = pipe.encode_prompt(text, device=CPU, num_images_per_prompt=1, do_classifier_free_guidance=False)[0]
    assert torch.equal(long["prompt_embeds"][:, :76], truncated[:, :76])  # same first chunk up to its EOS
    assert not torch.allclose(long["prompt_embeds"][:, 77:], long["prompt_embeds"][:, :77])
    negative_first = encode_weighted(pipe, "", "", CPU, 1, False, sdxl=sdxl_family)["prompt_embeds"]
    assert torch.allclose(long["negative_prompt_embeds"][:, 77:], negative_first, atol=1e-6)  # the padding is an empty chunk
    if sdxl_family:
        short = encode_weighted(pipe, words(75), "", CPU, 1, False, sdxl=True)
        assert torch.allclose(long["pooled_prompt_embeds"], short["pooled_prompt_embeds"], atol=1e-6)  # pooled from the first chunk
    assert long["negative_prompt_embeds"].shape[1] == 154
    no_cfg = encode_weighted(pipe, text, "", CPU, 1, False, sdxl=sdxl_family)
    assert no_cfg["negative_prompt_embeds"] is None


def test_a_long_negative_pads_the_prompt(sd15):
    embeds = encode_weighted(sd15, "a cat", words(100), CPU, 1, True, sdxl=False)
    assert embeds["prompt_embeds"].shape[1] == embeds["negative_prompt_embeds"].shape[1] == 154


def test_emphasis_scales_tokens_and_keeps_the_mean():
    torch.manual_seed(0)
    hidden = torch.randn(2, 77, 16) + 0.5
    weights = torch.ones(2, 77)
    weights[0, 3], weights[1, 10] = 1.5, 0.5
    out = apply_emphasis(hidden, weights)
    assert torch.allclose(out.mean(dim=(1, 2)), hidden.mean(dim=(1, 2)), atol=1e-6)
    ratio = out[0, 3] / hidden[0, 3]
    assert torch.allclose(ratio / (out[0, 4] / hidden[0, 4]), torch.full_like(ratio, 1.5), atol=1e-4)
    assert apply_emphasis(hidden, torch.ones(2, 77)) is hidden


def test_a_weight_changes_the_embedding_and_keeps_its_mean(sdxl):
    plain = encode_weighted(sdxl, "a red cat", "", CPU, 1, False, sdxl=True)["prompt_embeds"]
    weighted = encode_weighted(sdxl, "a (red:1.4) cat", "", CPU, 1, False, sdxl=True)["prompt_embeds"]
    assert not torch.allclose(plain, weighted)
    for half in (slice(0, 32), slice(32, 96)):  # each encoder's chunk keeps its own mean (penultimate layer: no layer norm)
        assert weighted[..., half].mean().item() == pytest.approx(plain[..., half].mean().item(), rel=1e-4)


def test_a_zero_mean_chunk_is_scaled_without_the_rescale():
    hidden = torch.nn.functional.layer_norm(torch.randn(1, 77, 16), (16,))  # every token's mean is 0
    weights = torch.ones(1, 77)
    weights[0, 2] = 1 / 1.1
    out = apply_emphasis(hidden, weights)
    assert out.isfinite().all()
    assert torch.allclose(out[0, 2], hidden[0, 2] / 1.1) and torch.equal(out[0, 3], hidden[0, 3])


def test_prompt_encode_timings_row(sd15):
    row = prompt_encode_timings(sd15, CPU, repeats=1)
    assert row["tokens_short"] <= 75 < row["tokens_long"] <= 150 and row["chunks_long"] == 2
    assert row["seconds_short"] > 0 and row["seconds_long"] > 0 and row["ratio"] > 0
