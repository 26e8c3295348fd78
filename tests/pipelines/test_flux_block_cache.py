"""FLUX block caches through diffusers' hooks: attached for one generation, metadata, refusals."""
from __future__ import annotations

import pytest

from pipelines.errors import InvalidRequest
from pipelines.hooks.flux_block_cache import FluxBlockCacheConfig
from pipelines.metrics import psnr
from tests.tiny_models import tiny_request


@pytest.mark.parametrize("kind", ["first-block", "taylorseer", "magcache"])
def test_block_cache_generates_and_detaches(shared_manager, kind):
    plain = shared_manager.generate(tiny_request("flux", steps=6, save=False))
    cached = shared_manager.generate(tiny_request("flux", steps=6, save=False, flux_cache=kind, flux_cache_threshold=0.2))
    assert cached.images[0].image.size == plain.images[0].image.size
    assert f"Block cache: {kind} 0.2" in cached.images[0].infotext
    assert psnr(plain.images[0].image, cached.images[0].image) > 15
    again = shared_manager.generate(tiny_request("flux", steps=6, save=False))
    assert list(again.images[0].image.getdata()) == list(plain.images[0].image.getdata()), "the cache stayed attached"


def test_block_cache_is_refused_for_unet_models(shared_manager):
    with pytest.raises(InvalidRequest, match="FLUX block caches work on FLUX.1 models"):
        shared_manager.generate(tiny_request("sd15", flux_cache="first-block"))
    with pytest.raises(InvalidRequest, match="must be off, first-block"):
        shared_manager.generate(tiny_request("flux", flux_cache="teacache"))


def test_config_checks():
    with pytest.raises(ValueError):
        FluxBlockCacheConfig(kind="nope")
    with pytest.raises(ValueError):
        FluxBlockCacheConfig(threshold=0)
