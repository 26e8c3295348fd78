"""`app.py upscale`: A1111's Extras upscale from the command line, run as a user runs it (a subprocess)."""
from __future__ import annotations

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from pipelines.extras import EXTRAS_FOLDER
from tests.test_cli import ROOT, assert_clean_error, cli_command, cli_env
from tests.upscale import tiny_state, write_esrgan
from tests.upscale.test_upscalers import noise_image

CASES = {
    "text": ("upscale", "{a}", "{b}", "--upscaler", "tiny_x4", "--scale", "2"),
    "json-scale-to": ("upscale", "{a}", "--upscaler", "Lanczos", "--width", "60", "--height", "30", "--upscaler-2", "tiny_x4",
                      "--upscaler-2-visibility", "0.5", "--json"),
    "unknown-upscaler": ("upscale", "{a}", "--upscaler", "nope"),
    "second-not-an-image": ("upscale", "{a}", "{text}", "--upscaler", "Lanczos"),
    "missing": ("upscale", "{a}", "{root}/nowhere.png"),
    "width-alone": ("upscale", "{a}", "--width", "64"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_cache_dir) -> dict:
    roots = {name: tmp_path_factory.mktemp(f"cli-upscale-{name}") for name in CASES}
    for root in roots.values():
        write_esrgan(root / "models" / "ESRGAN" / "tiny_x4.safetensors", tiny_state(4, seed=1))
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", "a red circle\nSteps: 20, Seed: 7")
        noise_image(24, 16, seed=1).save(root / "a.png", pnginfo=info)
        noise_image(16, 16, seed=2).save(root / "b.png")
        (root / "notes.png").write_text("not a picture")

    def run(name: str) -> subprocess.CompletedProcess:
        root = roots[name]
        paths = {"a": str(root / "a.png"), "b": str(root / "b.png"), "text": str(root / "notes.png"), "root": str(root)}
        args = [part.format(**paths) for part in CASES[name]]
        return subprocess.run(cli_command(root, demo_cache_dir, *args), cwd=ROOT, env=cli_env(root), capture_output=True, text=True, timeout=180)

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(CASES, pool.map(run, CASES)))
    return {name: (done[name], roots[name]) for name in CASES}


def extras_files(root: Path) -> list[Path]:
    return sorted((root / "outputs" / EXTRAS_FOLDER).rglob("*.png"))


def test_upscale_writes_each_picture_with_its_parameters_and_says_where(runs):
    completed, root = runs["text"]
    assert completed.returncode == 0, completed.stderr
    first, second = extras_files(root)
    timed = [re.sub(r" in \d+\.\d\d s ", " in T s ", line) for line in completed.stdout.splitlines()]
    assert timed == [f"{root / 'a.png'}: 48x32 in T s on cpu -> {first}", f"{root / 'b.png'}: 32x32 in T s on cpu -> {second}"]
    with Image.open(first) as png:
        assert png.size == (48, 32)
        assert png.text == {"parameters": "a red circle\nSteps: 20, Seed: 7",
                            "postprocessing": "Postprocess upscale by: 2, Postprocess upscaler: tiny_x4"}
    assert "tile 1/1" in completed.stderr


def test_upscale_json_scale_to_with_a_second_upscaler(runs):
    completed, root = runs["json-scale-to"]
    assert completed.returncode == 0, completed.stderr
    [line] = completed.stdout.splitlines()
    reply = json.loads(line)
    [saved] = extras_files(root)
    assert reply["path"] == str(saved) and (reply["width"], reply["height"]) == (60, 30) and reply["device"] == "cpu"
    assert reply["postprocessing"] == ("Postprocess upscale to: 60x30, Postprocess crop to fit: True, Postprocess upscaler: Lanczos, "
                                       "Postprocess upscaler 2: tiny_x4, Postprocess upscaler 2 visibility: 0.5")
    with Image.open(saved) as png:
        assert png.size == (60, 30) and np.asarray(png).std() > 0
    assert "tile" not in completed.stderr  # --json: nothing but the JSON on stdout, no progress on stderr


@pytest.mark.parametrize("case, needles", [
    ("unknown-upscaler", ["No Upscaler 1 named 'nope'", "Lanczos, Nearest, tiny_x4"]),
    ("second-not-an-image", ["notes.png"]),
    ("missing", ["nowhere.png"]),
    ("width-alone", ["Height (Scale to) must be a whole number"]),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(runs, case, needles):
    completed, root = runs[case]
    assert_clean_error(completed, *needles)
    assert extras_files(root) == []  # every picture and field is checked before the first one is upscaled
