"""Loading the face stack writes nothing into the user's home folder (onnxruntime's telemetry id)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LOAD_FACE_STACK = """
import pipelines  # sets the environment before any library loads
import numpy as np, onnxruntime, insightface
from pipelines.bench.tiny_onnx import recognizer_model
session = onnxruntime.InferenceSession(recognizer_model().SerializeToString(), providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
session.run(None, {name: np.zeros((1, 3, 112, 112), np.float32)})
print("ran")
"""


def test_onnxruntime_and_insightface_write_nothing_under_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "ORT_DISABLE_TELEMETRY")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", LOAD_FACE_STACK], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ran" in done.stdout, done.stderr[-2000:]
    written = [str(p.relative_to(home)) for p in home.rglob("*")]
    assert written == [], f"written under HOME: {written}"
