"""Settings: atomic save and load, damaged files, per-field fallback, and precedence."""
from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path

import pytest

from settings.schema import DEFAULT_SETTINGS_FILE, ENVIRONMENT, AppSettings, SettingsStore, coerce_setting, load_settings


@pytest.fixture
def store(tmp_path) -> SettingsStore:
    return SettingsStore(tmp_path / "conf" / "settings.json")


@pytest.fixture
def clean_env(monkeypatch):
    for variable in ENVIRONMENT.values():
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


KNOWN_CHANGES = dict(
    models_dir="/m", outputs_dir="/o", cache_dir="/c", device="cuda:1", ram_cache_gb=2.5, vram_reserve_gb=0.0,
    include_hf_cache=False, allow_pickle=True, preview_every=0, max_queue_size=3, vae_dtype="bf16", vae_tiling=True,
    vae_slicing=True, vae_honour_force_upcast=False, vae_sticky_fallback=False,
    last_generation={"prompt": "a cat, \"quoted\"", "steps": 4, "nested": {"x": [1, 2]}},
)


def changed_settings() -> AppSettings:
    """Fields away from their defaults: the known ones explicitly, newer ones by type where that is safe."""
    defaults = AppSettings()
    values = {}
    for item in dataclasses.fields(AppSettings):
        default = getattr(defaults, item.name)
        if item.name in KNOWN_CHANGES:
            values[item.name] = KNOWN_CHANGES[item.name]
        elif isinstance(default, bool):
            values[item.name] = not default
        elif isinstance(default, int):
            values[item.name] = default + 1
        elif isinstance(default, float):
            values[item.name] = default + 0.5
    settings = dataclasses.replace(defaults, **values)
    assert settings.validate() == {}
    return settings


def test_tests_never_use_the_real_settings_file():
    assert Path(os.environ["LIKENESS_SETTINGS"]) != DEFAULT_SETTINGS_FILE
    _, store = load_settings()
    assert store.path == Path(os.environ["LIKENESS_SETTINGS"])


def test_missing_file_gives_defaults_silently(store):
    assert store.load() == AppSettings()
    assert store.messages == []


def test_save_load_round_trip(store):
    settings = changed_settings()
    assert all(getattr(settings, name) != getattr(AppSettings(), name) for name in KNOWN_CHANGES)
    store.save(settings)
    assert store.load() == settings
    assert store.messages == []
    assert json.loads(store.path.read_text())["vae_dtype"] == "bf16"


def test_save_leaves_no_temporary_files_and_replaces_atomically(store, monkeypatch):
    store.save(AppSettings(preview_every=1))
    assert [p.name for p in store.path.parent.iterdir()] == ["settings.json"]
    # If the final rename fails, the old file is untouched (never half-written).
    before = store.path.read_text()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        store.save(AppSettings(preview_every=2))
    assert store.path.read_text() == before
    assert [p.name for p in store.path.parent.iterdir()] == ["settings.json"], "the temporary file is cleaned up"


def test_unserialisable_value_does_not_damage_the_file(store):
    store.save(AppSettings(preview_every=7))
    before = store.path.read_text()
    with pytest.raises(TypeError):
        store.save(AppSettings(last_generation={"x": object()}))
    assert store.path.read_text() == before
    assert store.load().preview_every == 7


def test_save_refuses_invalid_values(store):
    with pytest.raises(ValueError, match="ram_cache_gb must be positive"):
        store.save(AppSettings(ram_cache_gb=0))
    with pytest.raises(ValueError, match="device must be auto, cpu"):
        store.save(AppSettings(device="tpu"))
    assert not store.path.exists()


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "", "\x00\x01"])
def test_corrupt_file_is_kept_as_backup_and_defaults_used(store, content):
    store.path.parent.mkdir(parents=True)
    store.path.write_text(content)
    settings = store.load()
    assert settings == AppSettings()
    backups = list(store.path.parent.glob("settings.json.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == content
    assert not store.path.exists()
    (message,) = store.messages
    assert str(store.path) in message and backups[0].name in message and "defaults are in use" in message
    # Next start: no file, defaults, no complaint; saving works again.
    assert store.load() == AppSettings() and store.messages == []
    store.save(AppSettings(preview_every=3))
    assert store.load().preview_every == 3


def test_wrongly_typed_fields_fall_back_one_by_one(store):
    store.path.parent.mkdir(parents=True)
    store.path.write_text(json.dumps({
        "outputs_dir": "/kept",  # valid: kept
        "ram_cache_gb": "lots",  # wrong type
        "preview_every": 2.5,  # not whole
        "max_queue_size": True,  # bool is not a number here
        "include_hf_cache": "yes",  # not a bool
        "models_dir": 5,  # not text
        "vae_dtype": "fp8",  # right type, invalid value
        "device": "tpu",
        "vram_reserve_gb": -1,
        "last_generation": [1],
        "allow_pickle": True,  # valid: kept
        "preview_every_typo": 3,  # unknown: ignored
        "vae_tiling": 1,  # 1 is not true
    }))
    settings = store.load()
    defaults = AppSettings()
    assert settings.outputs_dir == "/kept" and settings.allow_pickle is True
    for name in ("ram_cache_gb", "preview_every", "max_queue_size", "include_hf_cache", "models_dir", "vae_dtype", "device",
                 "vram_reserve_gb", "last_generation", "vae_tiling"):
        assert getattr(settings, name) == getattr(defaults, name), name
        assert sum(f"'{name}'" in m for m in store.messages) == 1, name
    assert len(store.messages) == 10
    assert any("'ram_cache_gb' ignored" in m and "'lots'" in m for m in store.messages)
    assert any("'vae_dtype' must be auto, bf16, fp16 or fp32" in m for m in store.messages)
    assert store.path.exists(), "a file with some bad fields is not a corrupt file"


def test_whole_floats_are_accepted_for_int_fields():
    assert coerce_setting(3.0, 5) == 3
    assert coerce_setting(2, 1.5) == 2.0 and isinstance(coerce_setting(2, 1.5), float)
    with pytest.raises(ValueError):
        coerce_setting(False, 1.5)


@pytest.mark.parametrize("text", ['{"ram_cache_gb": Infinity}', '{"vram_reserve_gb": 1e999}'])
def test_infinite_numbers_fall_back_to_defaults(store, text):
    """Regression: Infinity passed validation and app.build_manager died on int(inf * 2**30)."""
    store.path.parent.mkdir(parents=True)
    store.path.write_text(text)
    settings = store.load()
    assert settings.ram_cache_gb == AppSettings().ram_cache_gb
    assert settings.vram_reserve_gb == AppSettings().vram_reserve_gb
    assert store.messages
    from app import build_manager  # the settings must be usable as they are

    settings.device = "cpu"
    settings.include_hf_cache = False
    settings.models_dir = str(store.path.parent / "models")
    settings.cache_dir = str(store.path.parent / "cache")
    assert build_manager(settings).cache.ram_budget_bytes == int(16 * 2**30)


def test_nan_falls_back(store):
    store.path.parent.mkdir(parents=True)
    store.path.write_text('{"ram_cache_gb": NaN}')
    assert store.load().ram_cache_gb == 16.0
    assert any("ram_cache_gb" in m for m in store.messages)


def test_precedence_flag_over_env_over_file_over_default(tmp_path, clean_env):
    path = tmp_path / "s.json"
    SettingsStore(path).save(AppSettings(models_dir="/from-file", outputs_dir="/from-file-out", cache_dir="/from-file-cache"))
    settings, _ = load_settings(path)
    assert (settings.models_dir, settings.outputs_dir, settings.device) == ("/from-file", "/from-file-out", "auto")

    clean_env.setenv("LIKENESS_MODELS_DIR", "/from-env")
    clean_env.setenv("LIKENESS_DEVICE", "cpu")
    clean_env.setenv("LIKENESS_OUTPUTS_DIR", "")  # empty: not set
    settings, _ = load_settings(path)
    assert (settings.models_dir, settings.outputs_dir, settings.device) == ("/from-env", "/from-file-out", "cpu")

    settings, _ = load_settings(path, {"models_dir": "/from-flag", "device": None, "cache_dir": "/flag-cache"})
    assert settings.models_dir == "/from-flag"
    assert settings.device == "cpu", "a flag that was not given (None) does not override"
    assert settings.cache_dir == "/flag-cache"
    # The file itself is not rewritten by overrides.
    assert json.loads(path.read_text())["models_dir"] == "/from-file"


def test_settings_path_from_env(tmp_path, clean_env):
    path = tmp_path / "elsewhere.json"
    SettingsStore(path).save(AppSettings(preview_every=9))
    clean_env.setenv("LIKENESS_SETTINGS", str(path))
    settings, store = load_settings()
    assert store.path == path and settings.preview_every == 9


def test_concurrent_saves_from_threads(store):
    """Regression: the temporary file was named by PID only, so two threads saving at once shared it
    (FileNotFoundError, or a half-written file moved into place)."""
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        for index in range(300):
            try:
                store.save(AppSettings(preview_every=offset + index))
            except BaseException as error:  # collected below
                errors.append(error)

    threads = [threading.Thread(target=work, args=(n * 1000,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.load().preview_every in (299, 1299) and store.messages == []
    assert [p.name for p in store.path.parent.iterdir()] == ["settings.json"]
