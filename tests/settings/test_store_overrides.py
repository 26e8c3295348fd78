"""The settings store: one-off flags and environment variables are not saved, project folders are
stored relative, only changed fields are applied, and a value this machine cannot use falls back."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from settings.schema import ENVIRONMENT, PROJECT_ROOT, AppSettings, SettingsStore, load_settings


@pytest.fixture
def clean_env(monkeypatch):
    for variable in ENVIRONMENT.values():
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_flags_and_environment_are_not_written_by_a_later_save(tmp_path, clean_env):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"models_dir": "/from-file", "preview_every": 2}))
    clean_env.setenv("LIKENESS_OUTPUTS_DIR", "/from-env")
    settings, store = load_settings(path, {"models_dir": "/from-flag", "device": "cpu", "cache_dir": None})
    assert (settings.models_dir, settings.outputs_dir, settings.device) == ("/from-flag", "/from-env", "cpu")
    assert store.overrides == {"models_dir": "--models-dir", "device": "--device", "outputs_dir": "LIKENESS_OUTPUTS_DIR"}

    # The first generation saves the last-used values: the overrides must not ride along.
    settings.last_generation = {"prompt": "a cat"}
    store.save(settings)
    stored = read(path)
    assert stored["models_dir"] == "/from-file", "the file's own value is kept"
    assert "outputs_dir" not in stored and "device" not in stored, "fields the file did not hold stay out of it"
    assert stored["preview_every"] == 2 and stored["last_generation"] == {"prompt": "a cat"}
    assert stored["cache_dir"] == ".cache", "a default folder inside the project is stored relative"

    # Next start without the flags: the file's values, not the one-off ones.
    clean_env.delenv("LIKENESS_OUTPUTS_DIR")
    again, _ = load_settings(path)
    assert (again.models_dir, again.outputs_dir, again.device) == ("/from-file", AppSettings().outputs_dir, "auto")


def test_a_field_changed_in_settings_is_saved_even_when_overridden(tmp_path, clean_env):
    path = tmp_path / "s.json"
    settings, store = load_settings(path, {"models_dir": "/from-flag", "device": "cpu"})
    store.update(settings, {"device": "cpu", "preview_every": 9})
    stored = read(path)
    assert stored["device"] == "cpu" and stored["preview_every"] == 9
    assert "models_dir" not in stored, "still a one-off"
    assert settings.models_dir == "/from-flag" and settings.preview_every == 9
    assert store.overrides == {"models_dir": "--models-dir"}


def test_update_applies_only_the_given_fields_onto_current_settings(tmp_path):
    store = SettingsStore(tmp_path / "s.json")
    settings = store.load()
    store.update(settings, {"preview_every": 3})  # page 2 saves first
    store.update(settings, {"ram_cache_gb": 4.0})  # page 1, loaded before, changes another field
    assert read(store.path)["preview_every"] == 3 and read(store.path)["ram_cache_gb"] == 4.0
    assert (settings.preview_every, settings.ram_cache_gb) == (3, 4.0)


def test_update_is_all_or_nothing(tmp_path):
    settings, store = load_settings(tmp_path / "s.json", {"device": "cpu"})
    with pytest.raises(ValueError, match="max_queue_size"):
        store.update(settings, {"preview_every": 4, "max_queue_size": 0, "device": "cpu"})
    assert settings.preview_every == AppSettings().preview_every and not store.path.exists()
    assert "device" in store.overrides, "a failed save does not turn an override into a saved value"


def test_project_folders_are_stored_relative_and_read_from_the_project(tmp_path, monkeypatch):
    store = SettingsStore(tmp_path / "s.json")
    store.save(AppSettings(outputs_dir=str(PROJECT_ROOT / "outputs" / "mine"), cache_dir="/elsewhere/cache"))
    stored = read(store.path)
    assert (stored["models_dir"], stored["outputs_dir"], stored["cache_dir"]) == ("models", "outputs/mine", "/elsewhere/cache")

    monkeypatch.chdir(tmp_path)  # relative folders are the project's, not the working directory's
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    store.path.write_text(json.dumps({"models_dir": "my-models", "outputs_dir": "~/pictures"}))
    settings = store.load()
    assert settings.models_dir == str(PROJECT_ROOT / "my-models")
    assert settings.outputs_dir == str(tmp_path / "home" / "pictures")
    assert settings.cache_dir == AppSettings().cache_dir and store.messages == []


def test_an_unusable_value_from_the_file_falls_back_with_a_backup(tmp_path, clean_env):
    path = tmp_path / "s.json"
    original = json.dumps({"device": "cuda", "preview_every": 2})
    path.write_text(original)
    settings, store = load_settings(path)
    assert store.fall_back_to_default(settings, "device", "CUDA is not available on this machine")
    assert settings.device == "auto" and settings.preview_every == 2
    (backup,) = tmp_path.glob("s.json.bak-*")
    assert backup.read_text() == original
    assert read(path)["device"] == "auto" and read(path)["preview_every"] == 2, "the next start is clean"
    (message,) = store.messages
    assert "device to 'cuda'" in message and "CUDA is not available" in message and backup.name in message and "'auto'" in message


def test_an_unusable_value_from_a_flag_is_left_to_the_caller(tmp_path, clean_env):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"device": "cpu"}))
    settings, store = load_settings(path, {"device": "cuda"})
    assert not store.fall_back_to_default(settings, "device", "no CUDA")
    assert settings.device == "cuda" and store.messages == [] and not list(tmp_path.glob("*.bak-*"))


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_app_starts_with_the_default_device_when_the_file_names_a_missing_one(tmp_path, clean_env, no_cuda):
    from app import check_device

    path = tmp_path / "s.json"
    path.write_text(json.dumps({"device": "cuda:1"}))
    settings, store = load_settings(path)
    assert check_device(settings, store) is None
    assert settings.device == "auto" and len(list(tmp_path.glob("s.json.bak-*"))) == 1
    assert any("cuda:1" in m for m in store.messages)


def test_a_missing_device_named_on_the_command_line_still_exits(tmp_path, clean_env, no_cuda, capsys):
    from app import main

    path = tmp_path / "s.json"
    path.write_text(json.dumps({"preview_every": 2}))
    code = main(["models", "--settings", str(path), "--device", "cuda", "--models-dir", str(tmp_path / "m")])
    assert code == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert read(path) == {"preview_every": 2} and not list(tmp_path.glob("*.bak-*"))
