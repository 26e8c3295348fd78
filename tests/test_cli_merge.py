"""`app.py merge`: A1111's Checkpoint Merger from the command line, run as a user runs it (a subprocess)."""
from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import load_file

from tests.ldm_layout import export_ldm_checkpoint
from tests.pipelines.test_merge import write_vae_file, write_variant
from tests.test_cli import ROOT, assert_clean_error, cli_command, cli_env
from tests.tiny_models import save_config_only

CASES = {
    "text": ("merge", "-a", "a", "-b", "b", "-m", "0.25"),
    "json-fp16": ("merge", "--primary", "a", "--secondary", "b", "--tertiary", "a", "--method", "Add difference", "--fp16",
                  "--name", "mine", "--bake-vae", "brighter.safetensors", "--json"),
    "other-family": ("merge", "-a", "a", "-b", "xl"),
    "models-after": ("models",),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_cache_dir, tiny_pipes) -> dict:
    roots = {name: tmp_path_factory.mktemp(f"cli-merge-{name}") for name in CASES}
    for root in roots.values():
        models = root / "models"
        a = export_ldm_checkpoint(tiny_pipes["sd15"], models / "a.safetensors", "sd15")
        save_config_only(tiny_pipes["sd15"], models / "a.config")
        write_variant(a, models / "b.safetensors", 1.5, 0.01)
        write_vae_file(a, models / "VAE" / "brighter.safetensors", 1.01)
        export_ldm_checkpoint(tiny_pipes["sdxl"], models / "xl.safetensors", "sdxl")

    def run(name: str) -> subprocess.CompletedProcess:
        root = roots[name]
        if name == "models-after":  # a merge, then the catalog as `models` lists it
            subprocess.run(cli_command(root, demo_cache_dir, "merge", "-a", "a", "-b", "b", "--name", "ab"), cwd=ROOT,
                           env=cli_env(root), capture_output=True, text=True, timeout=180, check=True)
        return subprocess.run(cli_command(root, demo_cache_dir, *CASES[name]), cwd=ROOT, env=cli_env(root), capture_output=True,
                              text=True, timeout=180)

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(CASES, pool.map(run, CASES)))
    return {name: (done[name], roots[name]) for name in CASES}


def test_merge_writes_the_new_model_next_to_a_and_says_so(runs):
    completed, root = runs["text"]
    assert completed.returncode == 0, completed.stderr
    path = root / "models" / "a_0.75-b_0.25-Weighted_sum-merged.safetensors"
    [line] = completed.stdout.splitlines()
    assert line.startswith(f"a_0.75-b_0.25-Weighted_sum-merged: {path} (") and " tensors merged in " in line
    a, b, merged = (load_file(str(root / "models" / name)) for name in ("a.safetensors", "b.safetensors", path.name))
    key = "model.diffusion_model.out.2.weight"
    assert torch.allclose(merged[key].double(), a[key].double() * 0.75 + b[key].double() * 0.25, atol=1e-6)
    assert "tensor " in completed.stderr


def test_merge_json_add_difference_in_float16(runs):
    completed, root = runs["json-fp16"]
    assert completed.returncode == 0, completed.stderr
    reply = json.loads(completed.stdout)
    assert reply["name"] == "mine" and reply["path"] == str(root / "models" / "mine.safetensors") and reply["merged"] > 0
    merged = load_file(reply["path"])
    assert {tensor.dtype for tensor in merged.values() if tensor.is_floating_point()} == {torch.float16}
    vae = load_file(str(root / "models" / "VAE" / "brighter.safetensors"))  # baked in, as float16
    baked = [key for key in merged if key.startswith("first_stage_model.")]
    assert baked and all(torch.equal(merged[key], vae[key.removeprefix("first_stage_model.")].half()) for key in baked)
    assert "tensor " not in completed.stderr  # --json: no progress lines


def test_another_family_exits_2_with_one_line(runs):
    completed, root = runs["other-family"]
    assert_clean_error(completed, "xl (Stable Diffusion XL, single-file) and a (Stable Diffusion 1.5, single-file)")
    assert sorted(p.name for p in (root / "models").glob("*.safetensors")) == ["a.safetensors", "b.safetensors", "xl.safetensors"]


def test_the_merged_model_is_in_the_catalog(runs):
    completed, _ = runs["models-after"]
    assert completed.returncode == 0, completed.stderr
    rows = [line.split()[0] for line in completed.stdout.splitlines()[2:] if line and not line.startswith(" ")]
    assert "ab" in rows, completed.stdout
