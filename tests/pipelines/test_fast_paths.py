"""The fast-path settings: channels-last and torch.compile applied when a model loads, kept while it is cached."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pipelines.fast_paths import FastPaths, apply_fast_paths, is_compiled
from pipelines.metrics import psnr
from pipelines.request import GenerationRequest
from settings.schema import AppSettings
from tests.tiny_models import copy_model


def conv_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_settings_default_to_off_and_refuse_unknown_compile_modes():
    defaults = AppSettings()
    assert (defaults.torch_compile, defaults.channels_last) == ("off", False)
    assert dataclasses.replace(defaults, torch_compile="max-autotune").validate() == {}
    assert "torch_compile" in dataclasses.replace(defaults, torch_compile="fast").validate()
    with pytest.raises(ValueError, match="torch_compile must be one of off, default, max-autotune"):
        FastPaths("reduce-overhead")
    assert not FastPaths().active and FastPaths(channels_last=True).active


def test_nothing_changes_when_both_are_off(tiny_pipes):
    pipe = tiny_pipes["sdxl"]
    assert apply_fast_paths(pipe, FastPaths()) == []
    assert not is_compiled(pipe.unet)


def sdxl_request(**changes) -> GenerationRequest:
    return GenerationRequest(model="fast", prompt="a red cat", steps=2, cfg_scale=5.0, seed=5, width=256, height=256,
                             sampler="Euler", save=False, **changes)


def test_channels_last_on_load_gives_the_same_image(make_manager, tmp_path, model_zoo):
    models = tmp_path / "models"
    copy_model(model_zoo["sdxl"], models, "fast")
    plain = make_manager(models, latent_cache_entries=0)
    reference = plain.generate(sdxl_request()).images[0].image
    manager = make_manager(models, latent_cache_entries=0, channels_last=True, cache_dir=tmp_path / "cache2")
    image = manager.generate(sdxl_request()).images[0].image
    with manager.use("fast") as model:
        weights = conv_weights(model.pipe.unet) + conv_weights(model.pipe.vae)
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights if w.shape[-1] > 1)
    assert psnr(reference, image) > 45


def test_compile_is_applied_once_per_load_and_kept_while_cached(make_manager, tmp_path, model_zoo, monkeypatch):
    """The denoiser is compiled in place on load (lazily: nothing compiles until it runs); later uses of the
    cached model keep the same compiled module. The compile itself is checked against eager in
    tests/pipelines/bench/test_gpu.py (inductor takes over a minute on 2 CPU cores, so it is not run here)."""
    calls = []
    original = torch.nn.Module.compile

    def recording(self, *args, **kwargs):
        calls.append((type(self).__name__, kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", recording)
    models = tmp_path / "models"
    copy_model(model_zoo["sdxl"], models, "fast")
    manager = make_manager(models, torch_compile="default")
    manager.load("fast")
    with manager.use("fast") as model:
        unet = model.pipe.unet
        assert is_compiled(unet)
    manager.load("fast")
    with manager.use("fast") as model:
        assert model.pipe.unet is unet
    assert calls == [("UNet2DConditionModel", {"mode": "default", "dynamic": None})]
    unet._compiled_call_impl = None  # never run the inductor compile in this test
