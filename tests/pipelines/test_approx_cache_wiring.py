"""The approximate cache's store and namespaces as the app sets them: Settings' URI reaches the manager,
and a request's cache namespace keeps one user's entries from another's."""
from __future__ import annotations

import dataclasses

import pytest

from tests.tiny_models import tiny_request


def similar_pair():
    base = tiny_request("sd15", seed=8, steps=10, approximate_cache=True, prompt="a red circle on a blue square")
    return base, dataclasses.replace(base, prompt="a red circle on a blue square!")


def test_namespaces_never_share_entries(make_manager, shared_models_dir, tmp_path):
    manager = make_manager(shared_models_dir, cache_dir=tmp_path / "cache", latent_cache_entries=0)
    first, similar = similar_pair()
    manager.generate(dataclasses.replace(first, cache_namespace="alice"))
    assert manager.generate(dataclasses.replace(similar, cache_namespace="bob")).cache_notes["approx cache"].startswith("miss")
    assert manager.generate(dataclasses.replace(similar, cache_namespace="alice")).cache_notes["approx cache"].startswith("hit")


def test_the_settings_uri_puts_the_vectors_in_milvus_lite(make_manager, shared_models_dir, tmp_path):
    pytest.importorskip("pymilvus")
    from settings.schema import AppSettings

    import app

    settings = AppSettings(models_dir=str(shared_models_dir), outputs_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                           include_hf_cache=False, approx_cache_uri=str(tmp_path / "vectors.db"))
    manager = app.build_manager(settings)
    assert manager.config.approx_cache_uri == str(tmp_path / "vectors.db")
    first, similar = similar_pair()
    manager.generate(first)
    assert manager.generate(similar).cache_notes["approx cache"].startswith("hit")
    assert type(manager.approximate_cache().vectors).__name__ == "MilvusStore"


def test_a_bad_namespace_is_refused(make_manager, shared_models_dir):
    from pipelines.errors import InvalidRequest

    manager = make_manager(shared_models_dir)
    with pytest.raises(InvalidRequest, match="cache namespace must be text"):
        manager.generate(tiny_request("sd15", cache_namespace=["x"]))


def test_a_logged_in_browser_user_is_its_own_namespace():
    from types import SimpleNamespace

    from ui.session import cache_namespace

    assert cache_namespace(SimpleNamespace(username="alice")) == "alice"
    assert cache_namespace(SimpleNamespace(username=None)) == "" and cache_namespace(None) == ""


def test_the_exact_repeat_cache_is_per_namespace_too(make_manager, shared_models_dir):
    manager = make_manager(shared_models_dir, latent_cache_entries=8)
    request = tiny_request("sd15", seed=9, steps=3)
    manager.generate(dataclasses.replace(request, cache_namespace="alice"))
    assert manager.generate(dataclasses.replace(request, cache_namespace="bob")).cache_notes["latent cache"] == "miss"
    assert manager.generate(dataclasses.replace(request, cache_namespace="alice")).cache_notes["latent cache"].startswith("hit")
