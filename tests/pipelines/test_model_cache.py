"""The two-level model cache under a tiny RAM budget: swap order, LRU eviction, locks, threads.

Three copies of the tiny SD 1.5 model (model-a, model-b, model-c) have the same size, so a budget
of N.5 model sizes holds exactly N of them.
"""
from __future__ import annotations

import threading

import pytest
import torch

from pipelines.errors import GenerationCancelled
from pipelines.generate import CancelToken
from pipelines.loading import pipeline_bytes
from pipelines.telemetry import Notice, StageEnded, StageStarted, StepDone
from tests.tiny_models import copy_model, tiny_request


@pytest.fixture(scope="module")
def model_size(tiny_pipes) -> int:
    return pipeline_bytes(tiny_pipes["sd15"])


@pytest.fixture
def abc_models(tmp_path, model_zoo):
    models = tmp_path / "models"
    for name in ("model-a", "model-b", "model-c"):
        copy_model(model_zoo["sd15"], models, name)
    return models


def cached(manager) -> list[str]:
    """Names in the cache, least recently used first."""
    return [r.name for r in manager.cache.records()]


def notices(manager) -> list[str]:
    seen: list[str] = []
    manager.bus.subscribe(lambda event: seen.append(event.text) if isinstance(event, Notice) else None)
    return seen


def test_load_reports_disk_then_ram(make_manager, abc_models, model_size):
    manager = make_manager(abc_models)
    first = manager.load("model-a")
    assert first.source == "disk"
    assert first.size_bytes == model_size
    assert first.describe().startswith("loaded model-a from disk in ")
    again = manager.load("model-a")
    assert again.source in ("RAM", "already on device")
    assert again.seconds == 0.0 or again.seconds < first.seconds
    assert manager.last_load("model-a") == again
    result = manager.generate(tiny_request("sd15", model="model-a", save=False))
    assert "model load" not in result.stage_seconds  # already loaded: no load stage at all


def test_generate_loads_from_disk_inside_a_model_load_stage(make_manager, abc_models):
    manager = make_manager(abc_models)
    events = []
    result = manager.generate(tiny_request("sd15", model="model-b", save=False), listener=events.append)
    assert "model load" in result.stage_seconds
    ended = [e for e in events if isinstance(e, StageEnded) and e.stage == "model load"]
    assert len(ended) == 1 and ended[0].detail.startswith("loaded model-b from disk")


def test_swap_evicts_the_other_model_when_only_one_fits(make_manager, abc_models, model_size):
    manager = make_manager(abc_models, ram_cache_bytes=int(model_size * 1.5))
    seen = notices(manager)
    assert manager.load("model-a").source == "disk"
    assert cached(manager) == ["model-a"]
    assert manager.load("model-b").source == "disk"
    assert cached(manager) == ["model-b"], "A must leave when B does not fit beside it"
    assert any(text.startswith("Unloaded model-a") and "RAM cache budget" in text for text in seen)
    assert manager.load("model-a").source == "disk", "A was evicted, so it comes from disk again"
    assert cached(manager) == ["model-a"]
    assert manager.cache.ram_bytes() == model_size <= manager.cache.ram_budget_bytes


def test_lru_eviction_keeps_the_model_used_last(make_manager, abc_models, model_size):
    manager = make_manager(abc_models, ram_cache_bytes=int(model_size * 2.5))
    manager.load("model-a")
    manager.load("model-b")
    manager.generate(tiny_request("sd15", model="model-a", save=False))  # A is now the most recent
    assert cached(manager) == ["model-b", "model-a"]
    manager.load("model-c")
    assert cached(manager) == ["model-a", "model-c"], "B was least recently used"
    assert manager.generate(tiny_request("sd15", model="model-a", save=False)).stage_seconds.get("model load") is None


def test_selecting_a_cached_model_counts_as_use(make_manager, abc_models, model_size):
    """Regression: on a CPU, load() of a cached model did not make it most recently used."""
    manager = make_manager(abc_models, ram_cache_bytes=int(model_size * 2.5))
    manager.load("model-a")
    manager.load("model-b")
    assert manager.load("model-a").source == "RAM"  # the user picks A again in the model menu
    manager.load("model-c")
    assert cached(manager) == ["model-a", "model-c"]


def test_locked_model_is_never_evicted(make_manager, abc_models, model_size):
    manager = make_manager(abc_models, ram_cache_bytes=int(model_size * 1.5))
    manager.load("model-a")
    with manager.cache.locked("model-a") as entry:
        assert entry.lock_count == 1
        manager.load("model-b")  # over budget: the only candidate to evict is locked
        assert "model-a" in manager.cache
        manager.load("model-c")  # B goes, A stays
        assert cached(manager) == ["model-a", "model-c"]
        assert [r.locked for r in manager.cache.records()] == [True, False]
        with pytest.raises(RuntimeError, match="in use"):
            manager.unload("model-a")
        assert "model-a" in manager.cache
    assert not any(r.locked for r in manager.cache.records())
    manager.load("model-b")  # unlocked now: A (least recent) is evicted
    assert "model-a" not in manager.cache
    assert "model-b" in manager.cache


def test_nested_locks_count(make_manager, abc_models, model_size):
    manager = make_manager(abc_models, ram_cache_bytes=int(model_size * 1.5))
    manager.load("model-a")
    with manager.cache.locked("model-a"):
        with manager.cache.locked("model-a") as entry:
            assert entry.lock_count == 2
        assert entry.lock_count == 1
        manager.load("model-b")
        assert "model-a" in manager.cache
    assert entry.lock_count == 0


def test_lock_released_when_generation_is_cancelled(make_manager, abc_models):
    manager = make_manager(abc_models)
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(GenerationCancelled) as raised:
        manager.generate(tiny_request("sd15", model="model-a", steps=4), cancel=cancel)
    assert raised.value.partial == []
    assert "stopped" in str(raised.value).lower()
    assert [(r.name, r.locked) for r in manager.cache.records()] == [("model-a", False)]
    assert manager.unload("model-a") is True  # unlocked, so it can be dropped
    # The generation lock was released too: the next generation runs.
    assert manager.generate(tiny_request("sd15", model="model-a", save=False)).images


def test_cancel_mid_run_stops_early_and_unlocks(make_manager, abc_models):
    manager = make_manager(abc_models)
    cancel = CancelToken()
    steps: list[int] = []

    def listener(event):
        if isinstance(event, StepDone):
            steps.append(event.index)
            if event.index == 2:
                cancel.cancel()

    with pytest.raises(GenerationCancelled):
        manager.generate(tiny_request("sd15", model="model-a", steps=6), listener=listener, cancel=cancel)
    assert steps == [1, 2], "diffusers must skip the remaining steps after the interrupt"
    assert not manager.cache.records()[0].locked


def test_lock_released_when_a_listener_raises(make_manager, abc_models):
    manager = make_manager(abc_models)

    def broken(event):
        if isinstance(event, StepDone):
            raise ValueError("listener failed")

    with pytest.raises(ValueError, match="listener failed"):
        manager.generate(tiny_request("sd15", model="model-a", save=False), listener=broken)
    assert not manager.cache.records()[0].locked
    assert manager.generate(tiny_request("sd15", model="model-a", save=False)).images


def test_concurrent_generations_finish_and_serialize(make_manager, abc_models):
    manager = make_manager(abc_models)
    manager.load("model-a")
    windows: dict[str, list[float]] = {}
    results: dict[str, object] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(name: str, model: str, seed: int) -> None:
        marks: list[float] = []

        def listener(event):
            if isinstance(event, (StageStarted, StageEnded)):
                marks.append(event.at)

        try:
            start.wait()
            results[name] = manager.generate(tiny_request("sd15", model=model, seed=seed, steps=3, save=False), listener=listener)
        except BaseException as error:  # reported below
            errors.append(error)
        windows[name] = marks

    threads = [threading.Thread(target=run, args=("one", "model-a", 1)), threading.Thread(target=run, args=("two", "model-b", 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a generation hung"
    assert not errors, errors
    assert results["one"].seeds == [1] and results["two"].seeds == [2]
    (a_start, a_end), (b_start, b_end) = [(min(w), max(w)) for w in windows.values()]
    assert a_end <= b_start or b_end <= a_start, "two generations ran on the device at the same time"
    assert not any(r.locked for r in manager.cache.records())
    # Serialized or not, each thread got its own model's image.
    solo = manager.generate(tiny_request("sd15", model="model-b", seed=2, steps=3, save=False))
    assert solo.images[0].image.tobytes() == results["two"].images[0].image.tobytes()


def test_two_threads_loading_one_model_load_it_once(make_manager, abc_models):
    manager = make_manager(abc_models)
    reports = []
    barrier = threading.Barrier(2)

    def load():
        barrier.wait()
        reports.append(manager.load("model-c"))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(r.source for r in reports) == ["RAM", "disk"]
    assert cached(manager) == ["model-c"]


def test_clear_and_unload(make_manager, abc_models):
    manager = make_manager(abc_models)
    manager.load("model-a")
    manager.load("model-b")
    assert manager.unload("model-a") is True
    assert manager.unload("model-a") is False
    assert cached(manager) == ["model-b"]
    manager.cache.clear()
    assert cached(manager) == []
    assert manager.cache.ram_bytes() == 0
    # The next use loads from disk again.
    assert manager.load("model-b").source == "disk"


CONCURRENT_LOADS = r"""
import json, sys, threading
from pathlib import Path
import torch
torch.set_num_threads(1)
from pipelines.manager import ManagerConfig, PipelineManager

root = Path(sys.argv[1])
original = torch.nn.Module.register_parameter
manager = PipelineManager(ManagerConfig(root / "models", root / "out", root / "cache", device="cpu", include_hf_cache=False))
names = sorted(p.name for p in (root / "models").iterdir())
errors = []
for _round in range(2):
    barrier = threading.Barrier(len(names))

    def load(name):
        barrier.wait()
        try:
            manager.load(name)
        except Exception as error:
            errors.append(f"{name}: {error}")

    threads = [threading.Thread(target=load, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    manager.cache.clear()
print(json.dumps({
    "errors": errors,
    "new_module_device": torch.nn.Linear(2, 2).weight.device.type,
    "register_parameter_patched": torch.nn.Module.register_parameter is not original,
}))
"""


def test_concurrent_loads_of_different_models(tmp_path, model_zoo):
    """Regression: per-name load locks let two threads load different models at once, but accelerate's
    init_empty_weights (inside from_pretrained) patches torch.nn.Module.register_parameter process-wide:
    interleaved loads failed as 'incomplete' and left every later module on the meta device.

    Runs in a subprocess: when this bug bites, it poisons the whole process.
    """
    import json
    import subprocess
    import sys
    from pathlib import Path

    for name in ("w", "x", "y", "z"):
        copy_model(model_zoo["sd15"], tmp_path / "models", name)
    root = Path(__file__).resolve().parents[2]
    completed = subprocess.run([sys.executable, "-c", CONCURRENT_LOADS, str(tmp_path)], cwd=root, capture_output=True,
                               text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    assert report["new_module_device"] == "cpu" and not report["register_parameter_patched"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the VRAM level needs a CUDA device")
def test_vram_level_on_cuda(tmp_path, abc_models, demo_cache_dir):
    """On a GPU: 'already on device' for a resident model; the other one is moved back to RAM to make room."""
    from pipelines.manager import ManagerConfig, PipelineManager

    def manager(**options):
        return PipelineManager(ManagerConfig(abc_models, tmp_path / "out", demo_cache_dir, device="cuda", include_hf_cache=False, **options))

    size = manager().load("model-a").size_bytes  # fp16 on CUDA: learn the size first
    gpu = manager(vram_budget_bytes=int(size * 1.5))
    assert gpu.load("model-a").source == "disk"
    assert gpu.load("model-a").source == "already on device"
    assert gpu.load("model-b").source == "disk"
    levels = {r.name: r.level for r in gpu.cache.records()}
    assert levels == {"model-a": "RAM", "model-b": "VRAM"}
    back = gpu.load("model-a")
    assert back.source == "RAM"
    assert {r.name: r.level for r in gpu.cache.records()} == {"model-a": "VRAM", "model-b": "RAM"}
    assert gpu.cache.vram_bytes() == size
    result = gpu.generate(tiny_request("sd15", model="model-b", save=False))
    assert result.device.startswith("cuda") and result.images
