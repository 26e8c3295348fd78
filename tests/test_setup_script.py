"""`bash setup.sh test`: the two parts (no browser or Ray on two processes, then the `serial` tests alone)
and the exit status CI reads, run against a stand-in for .venv's python that records what it was asked."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FAKE_PYTHON = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$CALLS"
case "$*" in
  *"not serial"*) exit "${FIRST_RC:-0}" ;;
  *) exit "${SECOND_RC:-0}" ;;
esac
"""


def digest(*paths: Path) -> str:
    return hashlib.sha256(b"".join(path.read_bytes() for path in paths)).hexdigest()


@pytest.fixture
def checkout(tmp_path) -> Path:
    """setup.sh and its requirements files, with an installed-looking .venv (its stamps match, so no pip runs)."""
    for name in ("setup.sh", "requirements.txt", "requirements-dev.txt", "requirements-scale.txt", "requirements-vocab.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(FAKE_PYTHON)
    (venv / "bin" / "python").chmod(0o755)
    (venv / ".installed-runtime").write_text(digest(tmp_path / "requirements.txt") + "\n")
    (venv / ".installed-vocab").write_text(digest(tmp_path / "requirements-vocab.txt") + "\n")
    (venv / ".installed-dev").write_text(digest(tmp_path / "requirements-dev.txt", tmp_path / "requirements-scale.txt") + "\n")
    tools = tmp_path / "tools"  # a chromium on PATH: the script must not try to install one
    tools.mkdir()
    (tools / "chromium").write_text("#!/bin/sh\n")
    (tools / "chromium").chmod(0o755)
    return tmp_path


def run(checkout: Path, *args: str, first: int = 0, second: int = 0) -> tuple[int, list[str]]:
    calls = checkout / "calls.txt"
    env = dict(os.environ, CALLS=str(calls), FIRST_RC=str(first), SECOND_RC=str(second),
               PATH=f"{checkout / 'tools'}:{os.environ['PATH']}")
    completed = subprocess.run(["bash", str(checkout / "setup.sh"), "test", *args], env=env, capture_output=True, text=True, timeout=60)
    return completed.returncode, calls.read_text().splitlines() if calls.exists() else []


def test_two_parts_each_with_the_users_options(checkout):
    status, calls = run(checkout, "-q", "-k", "cache")
    assert status == 0
    assert calls == ["-m pytest tests -n 2 --dist loadfile -m not serial -q -k cache", "-m pytest tests -m serial -q -k cache"]


@pytest.mark.parametrize(("first", "second", "expected"), [
    (5, 0, 0), (0, 5, 0),  # -k matched tests of one part only
    (5, 5, 5),  # nothing matched at all: pytest's own "no tests"
    (1, 0, 1), (0, 1, 1), (5, 2, 2), (1, 2, 1),  # a failure in either part fails the command
])
def test_exit_status_of_the_two_parts(checkout, first, second, expected):
    status, calls = run(checkout, first=first, second=second)
    assert status == expected
    assert len(calls) == 2  # the second part runs even when the first failed


@pytest.mark.parametrize("option", [["-n", "1"], ["-m", "not slow"], ["-p", "no:xdist"]])
def test_a_users_own_split_is_one_plain_run(checkout, option):
    status, calls = run(checkout, *option, "-x", second=3)
    assert status == 3
    assert calls == [" ".join(["-m pytest tests", *option, "-x"])]
