"""`app.py generate --workers ray`: the CLI's job on a local Ray worker; flags refused where not wired."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.distributed import REPO_ROOT
from tests.test_cli import cli_command, cli_env


def run(tmp_path, demo_cache_dir, *args, timeout=240):
    return subprocess.run(cli_command(tmp_path, demo_cache_dir, *args), cwd=REPO_ROOT, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def test_an_unreachable_ray_address_is_a_clear_error(tmp_path, demo_cache_dir):
    out = run(tmp_path, demo_cache_dir, "generate", "--prompt", "x", "--workers", "ray", "--ray-address", "127.0.0.1:9")
    assert out.returncode == 2
    assert "error: " in out.stderr and ("Cannot reach the Ray cluster at 127.0.0.1:9" in out.stderr or "needs Ray" in out.stderr)


def test_workers_flags_where_nothing_generates_are_refused(tmp_path, demo_cache_dir):
    out = run(tmp_path, demo_cache_dir, "models", "--workers", "ray")
    assert out.returncode == 2 and "`app.py models` runs in this process" in out.stderr


def test_worker_flags_without_workers_ray_are_refused(tmp_path, demo_cache_dir):
    out = run(tmp_path, demo_cache_dir, "generate", "--prompt", "x", "--worker-count", "2")
    assert out.returncode == 2 and "--worker-count only mean something with --workers ray" in out.stderr


def test_an_unreachable_ray_address_falls_back_in_process_only_when_asked(tmp_path, demo_cache_dir):
    out = run(tmp_path, demo_cache_dir, "generate", "--prompt", "a red circle", "--steps", "2", "--width", "64", "--height", "64",
              "--workers", "ray", "--ray-address", "127.0.0.1:9", "--workers-fallback", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Running in this process instead (--workers-fallback)" in out.stderr and "Traceback" not in out.stderr
    assert "Worker:" not in json.loads(out.stdout)["infotexts"][0]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is an optional extra: pip install -r requirements-scale.txt")
def test_generate_runs_on_a_worker_and_the_app_saves_it(tmp_path, demo_cache_dir):
    out = run(tmp_path, demo_cache_dir, "generate", "--prompt", "a red circle", "--steps", "3", "--width", "64", "--height", "64",
              "--seed", "9", "--workers", "ray", "--worker-count", "1", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["seeds"] == [9] and "Worker: worker-1 (cpu)" in result["infotexts"][0]
    assert (tmp_path / "outputs").is_dir() and result["images"][0].startswith(str(tmp_path / "outputs"))
