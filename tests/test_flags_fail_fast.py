"""A bad flag is refused at once: the parser, the checks of flags that are wrong by themselves and the
reading of an experiment file run before torch, diffusers or the models load (pipelines/choices.py).
Each case runs in a fresh interpreter, the only place where "nothing heavy was imported" can be seen."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "peft", "scipy", "gradio", "onnxruntime", "insightface")


def run_in_fresh_python(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "stderr": out.stderr}


def heavy_after(statement: str) -> dict:
    return run_in_fresh_python(
        f"import json, sys, app\nresult = {statement}\n"
        f"print(json.dumps({{'result': result, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))")


def test_the_parser_imports_nothing_heavy():
    out = heavy_after("len(app.build_parser().format_help())")
    assert out["heavy"] == []
    assert out["result"] > 1000  # the whole help, every choice list in it


@pytest.mark.parametrize("argv, message", [
    (["--gradio-auth", "nopassword"], "--gradio-auth: expected user:password"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be at least 1"),
    (["generate", "--prompt", "x", "--worker-count", "2"], "--worker-count only mean something with --workers ray"),
    (["models", "--workers", "ray"], "`app.py models` runs in this process"),
    (["train-demo", "--out", "unused", "--outline-weight", "0.5"], "--outline-weight 0.5: give 1"),
    (["experiment", "--config", "/no/such/experiment.json"], "Cannot read the experiment file /no/such/experiment.json"),
    (["experiment", "--config", __file__], "is not valid JSON"),
])
def test_flags_wrong_by_themselves_are_refused_before_anything_heavy_loads(argv, message):
    out = heavy_after(f"app.main({argv!r})")
    assert out["result"] == 2
    assert message in out["stderr"] and "Traceback" not in out["stderr"]
    assert out["heavy"] == []


def test_a_bad_choice_is_refused_by_the_parser_with_the_list():
    out = subprocess.run([sys.executable, "app.py", "generate", "--prompt", "x", "--vae-dtype", "fp8"], cwd=PROJECT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "--vae-dtype: invalid choice: 'fp8'" in out.stderr
    assert all(choice in out.stderr.rsplit("choose from", 1)[1] for choice in ("auto", "bf16", "fp16", "fp32"))


def test_a_schedule_type_that_is_not_one_is_refused_by_the_parser_with_the_list():
    out = subprocess.run([sys.executable, "app.py", "generate", "--prompt", "x", "--schedule-type", "Karras Exponential"], cwd=PROJECT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert ("--schedule-type: 'Karras Exponential' is not a schedule type; use one of: Automatic, Uniform, Karras, Exponential, "
            "Polyexponential, SGM Uniform, KL Optimal, Align Your Steps, Simple, Normal, DDIM, Beta") in out.stderr
