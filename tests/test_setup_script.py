"""`bash setup.sh test`: the three parts (no browser or Ray on two processes, then the `serial` tests alone,
then the Milvus store tests on Milvus Lite 2.4) and the exit status CI reads, run against a stand-in for .venv's python that records what it was asked."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FAKE_PYTHON = """#!/usr/bin/env bash
printf '%s%s\\n' "${PYTHONPATH:+PYTHONPATH=$PYTHONPATH }" "$*" >> "$CALLS"
case "$*" in
  *"not serial"*) exit "${FIRST_RC:-0}" ;;
  *test_approximate_stores*) exit "${THIRD_RC:-0}" ;;
  *) exit "${SECOND_RC:-0}" ;;
esac
"""
MILVUS_TESTS = "tests/pipelines/test_approximate_stores.py tests/pipelines/test_approx_cache_wiring.py tests/pipelines/bench/test_scale.py"


def digest(*paths: Path) -> str:
    return hashlib.sha256(b"".join(path.read_bytes() for path in paths)).hexdigest()


@pytest.fixture
def checkout(tmp_path) -> Path:
    """setup.sh and its requirements files, with an installed-looking .venv (its stamps match, so no pip runs)."""
    for name in ("setup.sh", "requirements.txt", "requirements-dev.txt", "requirements-scale.txt", "requirements-vocab.txt",
                 "requirements-milvus-lite-2.4.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(FAKE_PYTHON)
    (venv / "bin" / "python").chmod(0o755)
    (venv / ".installed-runtime").write_text(digest(tmp_path / "requirements.txt") + "\n")
    (venv / ".installed-vocab").write_text(digest(tmp_path / "requirements-vocab.txt") + "\n")
    (venv / ".installed-dev").write_text(digest(tmp_path / "requirements-dev.txt", tmp_path / "requirements-scale.txt") + "\n")
    (venv / "milvus-lite-2.4").mkdir()
    (venv / "milvus-lite-2.4" / ".installed").write_text(digest(tmp_path / "requirements-milvus-lite-2.4.txt") + "\n")
    tools = tmp_path / "tools"  # a chromium on PATH: the script must not try to install one
    tools.mkdir()
    (tools / "chromium").write_text("#!/bin/sh\n")
    (tools / "chromium").chmod(0o755)
    return tmp_path


def run(checkout: Path, *args: str, first: int = 0, second: int = 0, third: int = 0) -> tuple[int, list[str]]:
    calls = checkout / "calls.txt"
    env = dict(os.environ, CALLS=str(calls), FIRST_RC=str(first), SECOND_RC=str(second), THIRD_RC=str(third),
               PATH=f"{checkout / 'tools'}:{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)  # only the third part sets one
    completed = subprocess.run(["bash", str(checkout / "setup.sh"), "test", *args], env=env, capture_output=True, text=True, timeout=60)
    return completed.returncode, calls.read_text().splitlines() if calls.exists() else []


def test_three_parts_each_with_the_users_options(checkout):
    status, calls = run(checkout, "-q", "-k", "cache")
    assert status == 0
    assert calls == ["-m pytest tests -n 2 --dist loadfile -m not serial -q -k cache", "-m pytest tests -m serial -q -k cache",
                     f"PYTHONPATH=.venv/milvus-lite-2.4 -m pytest {MILVUS_TESTS} -q -k cache"]


@pytest.mark.parametrize(("first", "second", "third", "expected"), [
    (5, 0, 0, 0), (0, 5, 0, 0), (5, 5, 0, 0),  # -k matched tests of some parts only
    (5, 5, 5, 5),  # nothing matched at all: pytest's own "no tests"
    (1, 0, 0, 1), (0, 1, 0, 1), (5, 2, 0, 2), (1, 2, 0, 1), (0, 0, 3, 3),  # a failure in any part fails the command
])
def test_exit_status_of_the_three_parts(checkout, first, second, third, expected):
    status, calls = run(checkout, first=first, second=second, third=third)
    assert status == expected
    assert len(calls) == 3  # every part runs even when one before failed


@pytest.mark.parametrize("option", [["-n", "1"], ["-m", "not slow"], ["-p", "no:xdist"]])
def test_a_users_own_split_is_one_plain_run(checkout, option):
    status, calls = run(checkout, *option, "-x", second=3)
    assert status == 3
    assert calls == [" ".join(["-m pytest tests", *option, "-x"])]
