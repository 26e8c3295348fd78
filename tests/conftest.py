"""Shared fixtures: tiny seeded models built once per session, managers over temporary folders.

Everything runs offline on the CPU. The tiny SD 1.5 / SDXL / FLUX.1 pipelines (tests/tiny_models.py)
are built and saved as diffusers folders once per session; tests copy them into their own models
folder when they need a catalog of their own (eviction, single files), or use the shared
session manager when they only generate.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

# One intra-op thread. The tiny models are far too small to gain from a second thread, and on a
# 2-core machine where anything else runs, OpenMP's spinning workers make a UNet step 10-100x
# slower (measured: 7 ms with 1 thread, 0.5-3 s with 2 while another process held a core).
torch.set_num_threads(int(os.environ.get("LIKENESS_TEST_THREADS", "1")))

from pipelines.manager import ManagerConfig, PipelineManager  # noqa: E402
from pipelines.quiet import quiet_libraries  # noqa: E402
from tests import tiny_models  # noqa: E402

quiet_libraries()

from tests.tiny_models import FAMILIES, copy_model  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _private_settings_file(tmp_path_factory):
    """No test may read or write the real settings file (settings/user_settings.json)."""
    path = tmp_path_factory.mktemp("settings") / "user_settings.json"
    patch = pytest.MonkeyPatch()
    patch.setenv("LIKENESS_SETTINGS", str(path))
    yield path
    patch.undo()


_ORIGINAL_REGISTER_PARAMETER = torch.nn.Module.register_parameter


@pytest.fixture(autouse=True)
def _no_leaked_meta_patch():
    """Fail the test that leaves torch.nn.Module.register_parameter patched, and undo it.

    accelerate's init_empty_weights (inside diffusers' from_pretrained) patches it process-wide; two
    loads in parallel threads can leave it patched, after which every new module is on `meta` and
    every later test would fail for a reason far from its cause.
    """
    yield
    if torch.nn.Module.register_parameter is not _ORIGINAL_REGISTER_PARAMETER:
        torch.nn.Module.register_parameter = _ORIGINAL_REGISTER_PARAMETER
        pytest.fail("this test left torch.nn.Module.register_parameter patched (concurrent model loads); restored")


@pytest.fixture(scope="session")
def tiny_pipes() -> dict:
    """The in-memory tiny pipelines, one per family (built once; do not mutate their weights)."""
    return {family: tiny_models.BUILDERS[family]() for family in FAMILIES}


@pytest.fixture(scope="session")
def model_zoo(tmp_path_factory, tiny_pipes) -> dict[str, Path]:
    """family -> a saved diffusers folder of its tiny pipeline."""
    root = tmp_path_factory.mktemp("zoo")
    return {family: tiny_models.save_tiny_pipeline(pipe, root / f"tiny-{family}") for family, pipe in tiny_pipes.items()}


@pytest.fixture(scope="session", autouse=True)
def _random_demo(tmp_path_factory):
    """The app's demo entry points at the random demo (tiny, no attention at full latent resolution), built
    once: the suite generates at up to 512 px, where the trained demo's attention would be slow.
    Tests of the trained demo (tests/demo/) load the shipped folder themselves."""
    from pipelines.demo_model import DEMO_DIR_ENV, ensure_random_demo

    folder = ensure_random_demo(tmp_path_factory.mktemp("random-demo"))
    patch = pytest.MonkeyPatch()
    patch.setenv(DEMO_DIR_ENV, str(folder))
    yield folder
    patch.undo()


@pytest.fixture(scope="session")
def demo_cache_dir(tmp_path_factory) -> Path:
    """A cache folder holding the demo model, built once for the whole session (CLI tests too)."""
    from pipelines.demo_model import ensure_demo_model

    cache = tmp_path_factory.mktemp("cache")
    ensure_demo_model(cache)
    return cache


@pytest.fixture
def make_manager(tmp_path, demo_cache_dir):
    """Factory: a CPU manager over `models_dir` (default: an empty tmp folder), no HF cache scan."""

    def make(models_dir: Path | None = None, **options) -> PipelineManager:
        options.setdefault("include_hf_cache", False)
        options.setdefault("outputs_dir", tmp_path / "outputs")
        config = ManagerConfig(
            models_dir=models_dir or (tmp_path / "models"),
            cache_dir=options.pop("cache_dir", demo_cache_dir),
            device="cpu",
            **options,
        )
        return PipelineManager(config)

    return make


@pytest.fixture(scope="session")
def shared_models_dir(tmp_path_factory, model_zoo) -> Path:
    models = tmp_path_factory.mktemp("shared-models")
    for family, folder in model_zoo.items():
        copy_model(folder, models, f"tiny-{family}")
    return models


@pytest.fixture(scope="session")
def shared_manager(tmp_path_factory, shared_models_dir, demo_cache_dir) -> PipelineManager:
    """One manager for tests that only generate: its models stay loaded across tests.

    The exact-repeat latent cache is off here: tests that repeat a seed must see the denoiser run
    again (with it on, "same seed, same bytes" would only prove the cache works).
    """
    config = ManagerConfig(
        models_dir=shared_models_dir,
        outputs_dir=tmp_path_factory.mktemp("shared-outputs"),
        cache_dir=demo_cache_dir,
        device="cpu",
        include_hf_cache=False,
        latent_cache_entries=0,
    )
    return PipelineManager(config)


def pytest_collection_modifyitems(config, items):
    """Marks every browser test and every Ray test `serial`: the test command runs the rest on two xdist
    workers first, then these alone (two Chromium pages or Ray clusters beside other tests on 2 cores made
    page waits time out and reordered Ray's least-busy routing)."""
    for item in items:
        if item.nodeid.startswith("tests/distributed/") or {"page", "browser"} & set(item.fixturenames):
            item.add_marker(pytest.mark.serial)
