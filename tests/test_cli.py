"""The command line (`python app.py ...`) as a user runs it: subprocesses in temporary folders.

Every run gets its own models/outputs folders, the session's cache folder (the demo model is built
there once), a private settings file (LIKENESS_SETTINGS) and an empty Hugging Face cache, so nothing
on this machine is read or written.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipelines import demo
from pipelines.catalog import DEMO_MODEL_NAME

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"


def cli_env(root: Path) -> dict:
    env = dict(os.environ)
    env.update({
        "LIKENESS_SETTINGS": str(root / "settings.json"),
        "HF_HUB_CACHE": str(root / "hf-hub"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    })
    for variable in ("LIKENESS_MODELS_DIR", "LIKENESS_OUTPUTS_DIR", "LIKENESS_CACHE_DIR", "LIKENESS_DEVICE"):
        env.pop(variable, None)
    return env


def cli_command(root: Path, cache: Path, *args: str) -> list[str]:
    # The folder options go after the subcommand (app.py accepts them on both sides).
    folders = ["--models-dir", str(root / "models"), "--outputs-dir", str(root / "outputs"), "--cache-dir", str(cache)]
    return [sys.executable, str(APP), *args, *folders]


GEN = ("generate", "--prompt", "x", "--steps", "2", "--width", "64", "--height", "64")

# name -> arguments. Each runs once, in its own folders; all of them run two at a time (each run is
# ~3.5 s of CPU, nearly all of it importing torch and diffusers).
CASES = {
    "models": ("models",),
    "models-json": ("models", "--json"),
    "models-real": ("models",),
    "generate-json": (*GEN, "--seed", "7", "--clip-skip", "2", "--subseed", "9", "--subseed-strength", "0.4", "--tiling",
                      "--schedule-type", "sgm_uniform", "--json"),
    "generate-text": (*GEN, "--seed", "-1"),
    "steps-0": ("generate", "--prompt", "x", "--width", "64", "--height", "64", "--steps", "0"),
    "width-65": ("generate", "--prompt", "x", "--height", "64", "--width", "65"),
    "unknown-model": ("generate", "--prompt", "x", "--width", "64", "--height", "64", "--model", "nope"),
    "many-problems": ("generate", "--prompt", "x", "--width", "64", "--height", "64", "--seed", "-2", "--cfg", "-1", "--sampler", "Flow Euler",
                      "--clip-skip", "13"),
    "style-unknown": ("generate", "--prompt", "x", "--width", "64", "--height", "64", "--style", "Photo"),
    "vae-unknown": ("generate", "--prompt", "x", "--width", "64", "--height", "64", "--vae", "vae-ft-mse.safetensors"),
    "device-cuda": ("models", "--device", "cuda"),
    "device-typo": ("models", "--device", "gpu"),
    "corrupt-settings": ("models",),
}


def prepare(name: str, root: Path, model_zoo: dict) -> None:
    if name == "models-real":
        from tests.tiny_models import copy_model

        copy_model(model_zoo["sdxl"], root / "models", "xl")
        (root / "models" / "broken.safetensors").write_bytes(b"\x00\x01")
    if name == "corrupt-settings":
        (root / "settings.json").write_text("{broken")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_cache_dir, model_zoo) -> dict:
    """name -> (CompletedProcess, its folder), for every case in CASES."""
    from concurrent.futures import ThreadPoolExecutor

    roots = {}
    for name in CASES:
        roots[name] = tmp_path_factory.mktemp(f"cli-{name}")
        prepare(name, roots[name], model_zoo)

    def run(name: str) -> subprocess.CompletedProcess:
        root = roots[name]
        return subprocess.run(cli_command(root, demo_cache_dir, *CASES[name]), cwd=ROOT, env=cli_env(root),
                              capture_output=True, text=True, timeout=180)

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(CASES, pool.map(run, CASES)))
    return {name: (done[name], roots[name]) for name in CASES}


def assert_clean_error(completed: subprocess.CompletedProcess, *needles: str) -> str:
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr and "Traceback" not in completed.stdout
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, completed.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert completed.stdout == ""
    return errors[0]


def test_models_lists_the_demo(runs):
    completed, root = runs["models"]
    assert completed.returncode == 0, completed.stderr
    assert DEMO_MODEL_NAME in completed.stdout
    assert "No real models yet" in completed.stdout
    assert str(root / "models") in completed.stdout
    as_json = json.loads(runs["models-json"][0].stdout)
    assert as_json == [{
        "name": DEMO_MODEL_NAME, "family": "sd15", "format": "demo", "size_bytes": as_json[0]["size_bytes"],
        "path": as_json[0]["path"], "problem": None,
    }]
    files = [path for path in Path(as_json[0]["path"]).rglob("*") if path.is_file()]
    assert as_json[0]["size_bytes"] == sum(path.stat().st_size for path in files) > 1_000_000  # the shipped weights, on disk


def test_models_lists_real_models_and_problems(runs):
    completed, _ = runs["models-real"]
    assert completed.returncode == 0, completed.stderr
    rows = completed.stdout.splitlines()
    assert any(row.startswith("xl ") and "Stable Diffusion XL" in row and "diffusers" in row for row in rows)
    assert any(row.startswith("  ! broken: broken.safetensors is empty or truncated") for row in rows)
    assert "No real models yet" not in completed.stdout


def test_generate_json(runs):
    completed, root = runs["generate-json"]
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1, "--json prints exactly one JSON object"
    result = json.loads(lines[0])
    (image,) = result["images"]
    assert Path(image).is_file() and Path(image).name.endswith("-7.png")
    assert Path(image).is_relative_to(root / "outputs")
    assert result["seeds"] == [7]
    assert result["request"]["model"] == DEMO_MODEL_NAME and result["request"]["steps"] == 2
    assert result["request"]["cfg_scale"] == demo.DEFAULT_CFG  # no --cfg: the demo's own (the form's and the examples')
    assert result["request"]["clip_skip"] == 2 and ", Clip skip: 2, " in result["infotexts"][0]
    assert "Variation seed: 9, Variation seed strength: 0.4" in result["infotexts"][0]
    assert result["request"]["tiling"] is True and ", Tiling: True, " in result["infotexts"][0]
    assert result["request"]["schedule_type"] == "SGM Uniform" and ", Schedule type: SGM Uniform, " in result["infotexts"][0]
    assert len(result["step_seconds"]) == 2
    assert {"text encode", "denoise", "VAE decode"} <= set(result["stage_seconds"])
    assert "Traceback" not in completed.stderr
    assert "using the demo model (tiny, trained on simple shapes and faces: try --prompt" in completed.stderr
    # The CLI wrote only to its own folders: a settings file is never created by a generation.
    assert not (root / "settings.json").exists()


def test_generate_text_output(runs):
    completed, _ = runs["generate-text"]
    assert completed.returncode == 0, completed.stderr
    seeds = [line for line in completed.stdout.splitlines() if line.startswith("seed ")]
    assert len(seeds) == 1
    seed, path = seeds[0][len("seed "):].split(": ", 1)
    assert 0 <= int(seed) < 2**32 and Path(path).is_file()
    assert Path(path).name.endswith(f"-{seed}.png")
    assert completed.stdout.startswith("stages: ")
    assert "denoise: 2 steps at " in completed.stdout and " it/s); total " in completed.stdout
    assert "step 2/2" in completed.stderr


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("steps-0", ["Steps must be between 1 and 150, got 0."]),
        ("width-65", ["Width 65 is not a multiple of 8", "try 64"]),
        ("unknown-model", ["No model named 'nope'", DEMO_MODEL_NAME]),
        ("style-unknown", ["No style named 'Photo'", "styles here: none yet", "styles.csv"]),
        ("vae-unknown", ["No VAE named 'vae-ft-mse.safetensors'. Available: Automatic", "models/VAE"]),
        ("many-problems", ["Seed must be -1 (random)", "CFG scale must be between 0 and 30",
                           "Sampler 'Flow Euler' is not available for Stable Diffusion 1.5", "Clip skip must be between 1 and 12, got 13."]),
    ],
)
def test_bad_input_exits_2_with_one_line(runs, case, needles):
    completed, root = runs[case]
    assert_clean_error(completed, *needles)
    assert not (root / "outputs").exists(), "nothing is generated for a refused request"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(runs):
    assert_clean_error(runs["device-cuda"][0], "--device cuda", "CUDA is not available", "use cpu or auto")


def test_device_typo_is_bad_input(runs):
    """Regression: torch.device('gpu') raised RuntimeError, which app.main did not catch (traceback, exit 1)."""
    assert_clean_error(runs["device-typo"][0], "--device gpu")


def test_corrupt_settings_file_is_reported_and_the_command_still_runs(runs):
    completed, root = runs["corrupt-settings"]
    assert completed.returncode == 0, completed.stderr
    assert "could not be read" in completed.stderr and ".bak-" in completed.stderr
    (backup,) = root.glob("settings.json.bak-*")
    assert backup.read_text() == "{broken"


def test_ctrl_c_stops_at_the_next_step(tmp_path, demo_cache_dir):
    process = subprocess.Popen(
        cli_command(tmp_path, demo_cache_dir, "generate", "--prompt", "x", "--steps", "150", "--width", "512", "--height", "512"),
        cwd=ROOT, env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        seen = ""
        deadline = time.monotonic() + 90
        while "step 1/150" not in seen and time.monotonic() < deadline:
            chunk = process.stderr.read(1)
            if not chunk:
                break
            seen += chunk
        assert "step 1/150" in seen, seen
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = seen + rest
    assert process.returncode == 130, stderr
    assert "stopped: Generation stopped by the user." in stderr
    assert "step 150/150" not in stderr
    assert "Traceback" not in stderr
    assert not list(tmp_path.rglob("*.png")), "a stopped run saves nothing"


def test_cfg_defaults_to_the_chosen_models_family_and_an_explicit_one_is_kept(tmp_path, model_zoo, make_manager):
    import argparse

    from app import fill_family_defaults
    from pipelines.families import Family
    from tests.tiny_models import copy_model

    copy_model(model_zoo["sdxl"], tmp_path / "models", "xl")
    manager = make_manager(tmp_path / "models")

    def filled(model, cfg=None):
        args = argparse.Namespace(model=model, width=None, height=None, sampler=None, cfg_scale=cfg)
        return fill_family_defaults(manager, args)

    xl = filled("xl")
    assert xl.cfg_scale == Family.SDXL.spec.default_cfg and (xl.width, xl.height) == Family.SDXL.spec.default_size
    assert filled(DEMO_MODEL_NAME).cfg_scale == demo.DEFAULT_CFG
    assert filled("xl", cfg=9.5).cfg_scale == 9.5  # the user's --cfg wins
    assert filled("no such model").cfg_scale == 7.0  # generate() then names the unknown model; the CFG is not the problem
