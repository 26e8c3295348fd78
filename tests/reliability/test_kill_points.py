"""kill -9 at every write point, then a restart: no damaged file under a final name, no stale
temporary file after the start-up cleanup; and a full disk leaves no junk and says so.

A child process (writer_child.py) writes with the real classes in a loop: image saves, settings
saves, approximate-cache stores. It is SIGKILLed either while paused at a named write point of
pipelines.atomic (deterministic) or at a random moment, and the checks run as the app would at
its next start.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import atomic
from pipelines.errors import OutputError
from pipelines.outputs import NUMBERED, save_image
from tests.reliability import writer_child

CHILD = Path(writer_child.__file__)
POINTS = ("fsync:1", "publish:1", "published:1")
RANDOM_KILLS = 3


def kill_child(kind: str, folder: Path, point: str, rng: random.Random) -> list[str]:
    """Run the writer until it reaches `point` (or for a random while), SIGKILL it; return the
    temporary files it left behind."""
    child = subprocess.Popen([sys.executable, str(CHILD), kind, str(folder), point], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 120)
        assert ready, f"the writer never reached {point}"
        line = child.stdout.readline().strip()
        assert line == ("ready" if point == "random" else f"at {point.partition(':')[0]}"), f"the writer said {line!r}"
        if point == "random":
            time.sleep(rng.uniform(0.0, 0.4))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return [p.name for p in folder.rglob("*") if atomic.is_temporary(p.name)]


def temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if atomic.is_temporary(p.name) or p.name.endswith(".tmp")]


# -- image saves -------------------------------------------------------------------------------------


def check_outputs(outputs: Path) -> int:
    """Restart: every numbered PNG opens, verifies and decodes; a new save cleans the folder."""
    folder = outputs / dt.date.today().isoformat()
    numbered = sorted(p for p in folder.iterdir() if NUMBERED.match(p.name))
    for path in numbered:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
            assert image.size == (640, 640) and image.info["parameters"].startswith("seed ")
    saved = save_image(Image.new("RGB", (8, 8)), "after restart", outputs, 1)
    assert NUMBERED.match(saved.name) and int(saved.name[:5]) > max([int(p.name[:5]) for p in numbered], default=-1)
    saved.unlink()
    assert temporaries(outputs) == [], "the first save after a restart removes what a killed save left"
    return len(numbered)


def test_image_saves_survive_kill_at_every_write_point(tmp_path):
    rng = random.Random(11)
    outputs = tmp_path / "outputs"
    for point in POINTS:
        left = kill_child("images", outputs, point, rng)
        if point != "published:1":  # killed before the final name existed: only a temporary can be left
            assert left, f"killed at {point}, the save's temporary file should still be there"
        check_outputs(outputs)
    for _ in range(RANDOM_KILLS):
        kill_child("images", outputs, "random", rng)
        check_outputs(outputs)
    assert check_outputs(outputs) >= 1 + RANDOM_KILLS  # every run finished one save before its kill


# -- settings ----------------------------------------------------------------------------------------


def check_settings(folder: Path) -> None:
    from settings.schema import SettingsStore

    path = folder / "settings.json"
    store = SettingsStore(path)
    settings = store.load()
    assert store.messages == [], store.messages
    assert json.loads(path.read_text())["preview_every"] == settings.preview_every
    assert temporaries(folder) == [], "loading the settings removes what a killed save left"


def test_settings_saves_survive_kill_at_every_write_point(tmp_path):
    rng = random.Random(12)
    for point in POINTS:
        left = kill_child("settings", tmp_path, point, rng)
        if point != "published:1":
            assert left
        if (tmp_path / "settings.json").exists():
            check_settings(tmp_path)
    for _ in range(RANDOM_KILLS):
        kill_child("settings", tmp_path, "random", rng)
        check_settings(tmp_path)


# -- the approximate cache ---------------------------------------------------------------------------


def check_approx(folder: Path) -> int:
    """Restart: the cache opens; every entry it keeps loads, and a lookup with its embedding serves it."""
    from pipelines.caches.approximate import ApproximateCache
    from pipelines.caches.faiss_store import load_tensor

    cache = ApproximateCache(folder, writer_child.approx_config())
    entries = cache.entries()
    ids = [entry.id for entry in entries]
    for entry in entries:
        for item in entry.items.values():
            assert load_tensor(folder / item.file, "latents", item.sha256).shape == (1, 4, 48, 48)
        hit = cache.lookup(writer_child.APPROX_PARTITION, cache.vectors.embedding(entry), writer_child.APPROX_STEPS)
        assert hit is not None and hit.latents.shape == (1, 4, 48, 48) and hit.similarity > 0.99
    assert temporaries(folder) == []
    listed = cache.vectors.own_files()
    for entry in entries:
        listed |= {item.file for item in entry.items.values()}
    assert {p.name for p in folder.iterdir()} <= listed, "files no entry names were left"
    return len(ids)


def test_approximate_cache_survives_kill_at_every_write_point(tmp_path):
    rng = random.Random(13)
    # A store writes two latents (1, 2), the embedding (3), the manifest (4) and the index (5).
    for point in ("fsync:2", "publish:3", "publish:4", "published:4", "publish:5", "publish:9"):
        kill_child("approx", tmp_path, point, rng)
        check_approx(tmp_path)
    for _ in range(RANDOM_KILLS):
        kill_child("approx", tmp_path, "random", rng)
        check_approx(tmp_path)
    assert check_approx(tmp_path) >= 1


# -- a full disk -------------------------------------------------------------------------------------


def test_a_failed_image_write_leaves_nothing_and_says_the_disk_is_full(tmp_path, monkeypatch):
    def half_then_enospc(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 1000)  # half a file on disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_then_enospc)
    with pytest.raises(OutputError, match="the disk is full. Nothing was written"):
        save_image(Image.new("RGB", (8, 8)), "p", tmp_path, 1)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped where it cannot be mounted)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as stream:
        try:
            while True:
                stream.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def test_a_full_disk_leaves_no_junk_files(tiny_disk, caplog):
    from pipelines.caches.approximate import ApproximateCache
    from settings.schema import AppSettings, SettingsStore

    outputs, cache_folder = tiny_disk / "outputs", tiny_disk / "approx"
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    store = SettingsStore(tiny_disk / "settings.json")
    store.save(AppSettings(preview_every=3))
    cache = ApproximateCache(cache_folder, writer_child.approx_config())
    cache.store("p", writer_child.approx_vector(0), 10, {2: torch.randn(1, 4, 48, 48)})
    saved = []
    with pytest.raises(OutputError, match="the disk is full"):
        for seed in range(20):  # 197 kB each: the disk fills within a few saves
            saved.append(save_image(noise, "p", outputs, seed))
    assert 1 <= len(saved) < 20
    filler = fill(tiny_disk)
    with pytest.raises(OSError):
        store.save(AppSettings(preview_every=4))
    assert cache.store("p", writer_child.approx_vector(1), 10, {2: torch.randn(1, 4, 48, 48)}) is None
    assert "the disk is full" in caplog.text
    with pytest.raises(OutputError, match="the disk is full"):
        save_image(noise, "p", outputs, 99)

    filler.unlink()
    assert temporaries(tiny_disk) == []
    folder = outputs / dt.date.today().isoformat()
    assert sorted(folder.iterdir()) == sorted(saved), "only the complete images are there"
    for path in saved:
        with Image.open(path) as image:
            image.load()
    assert SettingsStore(store.path).load().preview_every == 3
    assert check_approx(cache_folder) == 1
