"""`python app.py experiment --config FILE` as a user runs it: exit codes, messages, the files written."""
from __future__ import annotations

import json
import subprocess

import pytest

from pipelines.catalog import DEMO_MODEL_NAME
from tests.test_cli import cli_command, cli_env

EXPERIMENT = {
    "base": {"model": DEMO_MODEL_NAME, "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 3},
    "axes": [{"setting": "steps", "values": "2-3"}, {"setting": "vae_dtype", "values": "fp32, bf16"}],
    "warmup": False,
}


def run_cli(root, cache, config: dict | None, *args, settings: dict | None = None):
    root.mkdir(parents=True, exist_ok=True)
    (root / "settings.json").write_text(json.dumps(settings or {}))
    path = root / "experiment.json"
    if config is not None:
        path.write_text(json.dumps(config))
    command = cli_command(root, cache, "experiment", "--config", str(path), *args)
    return subprocess.run(command, env=cli_env(root), capture_output=True, text=True, timeout=240)


def test_runs_and_writes_the_same_files_as_the_tab(tmp_path, demo_cache_dir):
    done = run_cli(tmp_path, demo_cache_dir, EXPERIMENT, "--out", str(tmp_path / "exp"), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "Done: 4 of 4 cells." and not summary["cancelled"]
    assert [c["VAE dtype"] for c in summary["cells"]] == ["fp32", "fp32", "bf16", "bf16"]  # what the decode really ran in
    for name in ("grid.png", "cells.csv", "cells.json", "experiment.json"):
        assert (tmp_path / "exp" / name).is_file(), name
    rerun = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    assert rerun["axes"] == EXPERIMENT["axes"] and rerun["base"]["seed"] == 3


@pytest.mark.parametrize("case, config, message", [
    ("bad-value", dict(EXPERIMENT, axes=[{"setting": "steps", "values": "0-2"}]), "error: X axis (Steps): '0' is not valid: Steps must be between 1 and 150"),
    ("bad-syntax", dict(EXPERIMENT, axes=[{"setting": "cfg_scale", "values": "1-x"}]), "error: X axis: The CFG scale axis value '1-x' is not a number or a range"),
    ("not-installed", dict(EXPERIMENT, axes=[{"setting": "model", "values": "sdxl-base"}]), "error: X axis (Model): the model 'sdxl-base' is not installed"),
    ("no-file", None, "error: Cannot read the experiment file"),
])
def test_bad_input_exits_2_with_the_message(tmp_path, demo_cache_dir, case, config, message):
    done = run_cli(tmp_path / case, demo_cache_dir, config)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / case / "outputs" / "experiments").exists()  # nothing ran


def test_a_grid_above_the_settings_limit_needs_yes(tmp_path, demo_cache_dir):
    refused = run_cli(tmp_path / "refused", demo_cache_dir, EXPERIMENT, settings={"experiment_confirm_cells": 3})
    assert refused.returncode == 2
    assert "4 cells (4 generations), above the limit of 3" in refused.stderr and "--yes" in refused.stderr
    confirmed = run_cli(tmp_path / "confirmed", demo_cache_dir, EXPERIMENT, "--yes", settings={"experiment_confirm_cells": 3})
    assert confirmed.returncode == 0, confirmed.stderr
    assert "Done: 4 of 4 cells." in confirmed.stdout
    assert list((tmp_path / "confirmed" / "outputs" / "experiments").glob("*/grid.png"))
