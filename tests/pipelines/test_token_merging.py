"""A1111's Token merging ratio (ToMe, the tomesd package) for one generation: the full-resolution self-attention runs
on fewer tokens while the run lasts, the same seed gives the same picture, the blocks are put back after, other hooks
(DeepCache, a LoRA) work beside it; FLUX.1 and out-of-range ratios are refused by name. On a small SD 1.5-layout
pipeline with attention at full latent resolution (seeded random weights), through the real manager."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.demo_model import build_tiny_sd15_pipeline
from pipelines.errors import InvalidRequest
from pipelines.experiments.axes import find_setting
from pipelines.hooks.token_merging import merged_blocks
from pipelines.infotext import parse_infotext
from tests.tiny_models import copy_model, save_tiny_pipeline, tiny_request

MODEL = "attn-sd15"  # SD 1.5's block layout: cross-attention blocks at full latent resolution, as the real model


@pytest.fixture(scope="module")
def manager(tmp_path_factory, model_zoo, tiny_pipes):
    from pipelines.manager import ManagerConfig, PipelineManager
    from tests.lora.make_loras import write_lora

    models = tmp_path_factory.mktemp("tome-models")
    pipe = build_tiny_sd15_pipeline(seed=5, unet_channels=(32, 64, 64), sd15_block_layout=True)
    save_tiny_pipeline(pipe, models / MODEL)
    copy_model(model_zoo["sdxl"], models, "tiny-sdxl")
    copy_model(model_zoo["flux"], models, "tiny-flux")
    write_lora(models / "Lora", "attn-lora", pipe, "sd15", "kohya", seed=2)
    return PipelineManager(ManagerConfig(models_dir=models, outputs_dir=tmp_path_factory.mktemp("tome-out"),
                                         cache_dir=tmp_path_factory.mktemp("tome-cache"), device="cpu", include_hf_cache=False,
                                         latent_cache_entries=0))


def request(**fields):
    return tiny_request("sd15", model=MODEL, seed=4, steps=4, width=128, height=128, save=False, **fields)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


def test_merging_changes_the_picture_a_little_repeatably_and_only_while_it_runs(manager):
    seen = []
    with manager.use(MODEL) as model:
        block = next(m for m in model.pipe.unet.modules() if type(m).__name__ == "BasicTransformerBlock")
        own_class = type(block)
        # The block's self-attention sees the merged tokens: record how many (128 px: 16x16 = 256 latent tokens).
        handle = block.attn1.register_forward_pre_hook(lambda _module, args: seen.append(args[0].shape[1]))
    try:
        plain = manager.generate(request())
        plain_tokens = set(seen)
        seen.clear()
        merged = manager.generate(request(token_merging_ratio=0.5))
        again = manager.generate(request(token_merging_ratio=0.5))
    finally:
        handle.remove()
    assert plain_tokens == {256} and set(seen) == {128}, "half the full-resolution tokens merged, none without it"
    assert np.array_equal(pixels(merged), pixels(again)), "the same seed gives the same picture (no random destinations)"
    difference = np.abs(pixels(merged) - pixels(plain)).mean()
    assert 0 < difference < 40, difference
    assert type(block) is own_class and not merged_blocks(block) and not merged_blocks(model.pipe.unet), "the blocks are put back"
    assert merged.hook_stats["token merging"]["ratio"] == 0.5 and merged.hook_stats["token merging"]["blocks"] > 0
    assert parse_infotext(merged.images[0].infotext)["Token merging ratio"] == "0.5"
    assert "Token merging ratio" not in parse_infotext(plain.images[0].infotext)


def test_beside_deepcache_and_a_lora_and_on_sdxl(manager):
    """Each hook keeps its own part: DeepCache wraps the UNet's forward, the LoRA the linear layers, ToMe the blocks'
    class; all three in one run, then the model is as loaded."""
    both = manager.generate(request(token_merging_ratio=0.5, deepcache_interval=2, prompt="a lighthouse <lora:attn-lora:1>"))
    params = parse_infotext(both.images[0].infotext)
    assert params["DeepCache"].startswith("N=2") and "attn-lora" in params["Lora hashes"] and params["Token merging ratio"] == "0.5"
    assert both.hook_stats["deepcache"]["cached_steps"] > 0
    with manager.use(MODEL) as model:
        assert not merged_blocks(model.pipe.unet)
    sdxl = manager.generate(tiny_request("sdxl", seed=2, steps=2, save=False, token_merging_ratio=0.3))
    assert parse_infotext(sdxl.images[0].infotext)["Token merging ratio"] == "0.3"


@pytest.mark.parametrize("family, value, message", [
    ("flux", 0.5, "Token merging works on SD 1.5 and SDXL"),
    ("sd15", 0.9, "Token merging ratio must be between 0 (off) and 0.75, got 0.9"),
    ("sd15", -0.1, "between 0 (off) and 0.75"),
    ("sd15", float("nan"), "between 0 (off) and 0.75"),
    ("sd15", "half", "between 0 (off) and 0.75"),
])
def test_what_cannot_run_is_refused_by_name(manager, family, value, message):
    fields = dict(model=MODEL) if family == "sd15" else {}
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(").replace(")", r"\)")):
        manager.generate(tiny_request(family, save=False, token_merging_ratio=value, **fields))


def test_an_experiment_axis_sets_it():
    assert find_setting("Token merging ratio").field == "token_merging_ratio"
