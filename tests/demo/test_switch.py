"""Which demo the app lists: the random one (built on first use) while the trained one is switched off."""
from __future__ import annotations

import pytest

from pipelines.demo import SHIP_TRAINED_DEMO, WEIGHTS_DIR
from pipelines.demo_model import DEMO_DIR_ENV, demo_model_dir, demo_problem, ensure_demo_model, random_demo_dir


def test_the_demo_folder_follows_the_switch_and_the_override(tmp_path, monkeypatch):
    monkeypatch.delenv(DEMO_DIR_ENV, raising=False)
    expected = WEIGHTS_DIR if SHIP_TRAINED_DEMO else random_demo_dir(tmp_path)
    assert demo_model_dir(tmp_path) == expected
    monkeypatch.setenv(DEMO_DIR_ENV, str(tmp_path / "elsewhere"))
    assert demo_model_dir(tmp_path) == tmp_path / "elsewhere"
    assert "demo model folder is missing" in demo_problem(tmp_path / "elsewhere") and "git checkout" in demo_problem(tmp_path / "elsewhere")


@pytest.mark.skipif(SHIP_TRAINED_DEMO, reason="the trained demo ships as files; nothing is built")
def test_with_the_switch_off_a_fresh_install_builds_the_random_demo(tmp_path, monkeypatch):
    monkeypatch.delenv(DEMO_DIR_ENV, raising=False)
    assert demo_problem(random_demo_dir(tmp_path)) is None  # not built yet, and that is fine
    folder = ensure_demo_model(tmp_path)
    assert folder == random_demo_dir(tmp_path) and (folder / "model_index.json").is_file()
