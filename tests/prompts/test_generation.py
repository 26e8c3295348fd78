"""A1111 prompt syntax through a whole generation: long weighted prompts, the prompt memo, FLUX.1's notice."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.tiny_models import tiny_request

LONG = ", ".join(["a (red:1.3) cat on a [blue] chair"] * 12) + " BREAK soft light"  # > 75 tokens, weights, BREAK
FLUX_NOTICE = "FLUX.1 ignores prompt weights"


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_long_weighted_prompt_generates(shared_manager, family):
    result = shared_manager.generate(tiny_request(family, prompt=LONG, negative_prompt="ugly", seed=7))
    plain = shared_manager.generate(tiny_request(family, prompt=LONG.replace("(red:1.3)", "red"), negative_prompt="ugly", seed=7))
    image, other = (np.asarray(r.images[0].image, dtype=np.int16) for r in (result, plain))
    assert image.std() > 1
    assert np.abs(image - other).max() > 0, "the weight reached the denoiser"
    assert not any("tokens" in w for w in result.warnings), "SD 1.5 / SDXL read long prompts whole"
    assert not any(FLUX_NOTICE in w for w in result.warnings)


def test_the_prompt_memo_keys_on_the_parsed_prompt(shared_manager):
    first = shared_manager.generate(tiny_request("sd15", prompt="a (((quiet))) memo cat", seed=3))
    same = shared_manager.generate(tiny_request("sd15", prompt="a (quiet:1.331) memo cat", seed=3))
    plain = shared_manager.generate(tiny_request("sd15", prompt="a quiet memo cat", seed=3))
    assert first.cache_notes["prompt memo"] == "miss"
    assert same.cache_notes["prompt memo"] == "hit", "an equivalent spelling shares the entry"
    assert plain.cache_notes["prompt memo"] == "miss", "(quiet) and quiet are different prompts"


def test_flux_drops_weights_with_a_notice(shared_manager):
    weighted = shared_manager.generate(tiny_request("flux", prompt="a (portrait:1.4) [photo]", seed=5))
    plain = shared_manager.generate(tiny_request("flux", prompt="a portrait photo", seed=5))
    assert any(FLUX_NOTICE in w for w in weighted.warnings)
    assert not any(FLUX_NOTICE in w for w in plain.warnings)
    assert np.array_equal(np.asarray(weighted.images[0].image), np.asarray(plain.images[0].image)), "T5 reads the same words"


def test_flux_still_warns_that_clip_reads_77_tokens(shared_manager):
    result = shared_manager.generate(tiny_request("flux", prompt="a portrait photo of an old man, " * 40, save=False))
    assert any("tokens" in w and "77" in w and "ignored" in w for w in result.warnings)


def test_a_textual_inversion_by_file_name(shared_manager, tiny_pipes, monkeypatch, tmp_path):
    from safetensors.torch import save_file

    from pipelines.errors import InvalidRequest
    from pipelines.infotext import parse_infotext
    from pipelines.prompts.embeddings import EmbeddingLibrary

    width = tiny_pipes["sd15"].text_encoder.get_input_embeddings().embedding_dim  # the saved tiny-sd15 is this pipeline
    torch.manual_seed(3)
    save_file({"emb_params": torch.randn(2, width) * 2}, tmp_path / "glowtoken.safetensors")
    monkeypatch.setattr(shared_manager, "embeddings", EmbeddingLibrary(tmp_path))
    with_ti = shared_manager.generate(tiny_request("sd15", prompt="a glowtoken cat", seed=9, save=False))
    params = parse_infotext(with_ti.images[0].infotext)
    assert params["TI hashes"].startswith("glowtoken: ") and len(params["TI hashes"]) == len("glowtoken: ") + 12
    monkeypatch.setattr(shared_manager, "embeddings", EmbeddingLibrary(tmp_path / "none"))
    without = shared_manager.generate(tiny_request("sd15", prompt="a glowtoken cat", seed=9, save=False))
    assert "TI hashes" not in parse_infotext(without.images[0].infotext)
    assert without.cache_notes["prompt memo"] == "miss", "the memo keys on the embeddings used"
    assert not np.array_equal(np.asarray(with_ti.images[0].image), np.asarray(without.images[0].image))

    torch.save({"string_to_param": {"*": torch.randn(1, width)}}, tmp_path / "oldstyle.pt")
    monkeypatch.setattr(shared_manager, "embeddings", EmbeddingLibrary(tmp_path))
    with pytest.raises(InvalidRequest, match=r"oldstyle\.pt"):
        shared_manager.generate(tiny_request("sd15", prompt="an oldstyle cat", save=False))
