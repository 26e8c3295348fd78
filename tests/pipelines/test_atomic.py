"""pipelines.atomic: temporary names, stale-file cleanup, race-free numbering across processes."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from pipelines import atomic
from pipelines.outputs import NUMBERED, save_image


def test_temporary_names_never_count_as_outputs(tmp_path):
    temporary = atomic.temporary_path(tmp_path / "00001-5.png")
    assert atomic.is_temporary(temporary.name) and not NUMBERED.match(temporary.name)
    assert temporary.parent == tmp_path and str(os.getpid()) in temporary.name


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    mine = atomic.temporary_path(tmp_path / "a.png")  # this process, fresh: a save in progress
    dead = tmp_path / f".b.png.{dead_pid()}-0123abcd{atomic.TEMPORARY_SUFFIX}"
    old = tmp_path / f".c.png.{os.getpid()}-89abcdef{atomic.TEMPORARY_SUFFIX}"
    other = tmp_path / ".d.png.tmp"  # not ours: never touched
    for path in (mine, dead, old, other):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 120, time.time() - 120))
    removed = atomic.remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([dead, old])
    assert mine.exists() and other.exists()


def test_write_new_takes_the_first_free_name_and_never_overwrites(tmp_path):
    (tmp_path / "x1").write_text("first")
    path = atomic.write_new(tmp_path, ["x1", "x2"], lambda temporary: temporary.write_text("second"))
    assert path.name == "x2" and (tmp_path / "x1").read_text() == "first" and path.read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x1", "x2"]


def _save_many(args) -> list[str]:
    folder, worker = args
    image = Image.new("RGB", (16, 16), (worker * 40, 0, 0))
    return [save_image(image, f"worker {worker}", folder, 7).name for _ in range(15)]  # one seed: one name per number


def test_processes_saving_into_one_folder_never_overwrite_each_other(tmp_path):
    with ProcessPoolExecutor(3) as pool:
        names = [name for batch in pool.map(_save_many, [(tmp_path, w) for w in range(3)]) for name in batch]
    assert len(set(names)) == len(names) == 45
    numbers = sorted(int(name[:5]) for name in names)
    assert numbers == list(range(45))
    files = list(Path(tmp_path).rglob("*.png"))
    assert len(files) == 45 and not [p for p in tmp_path.rglob("*") if atomic.is_temporary(p.name)]
    written = []
    for path in files:
        with Image.open(path) as image:
            written.append(image.info["parameters"])
    assert sorted(written) == sorted(f"worker {w}" for w in range(3) for _ in range(15)), "a save was overwritten"


def test_the_model_hash_file_is_written_whole_and_cleans_up_after_a_killed_write(tmp_path):
    import hashlib
    import json

    from pipelines.hashes import model_hash

    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights" * 1000)
    cache_file = tmp_path / "cache" / "hashes.json"
    cache_file.parent.mkdir()
    left = cache_file.parent / f".hashes.json.{dead_pid()}-0123abcd{atomic.TEMPORARY_SUFFIX}"
    left.write_text('{"half')
    assert model_hash(model, cache_file) == hashlib.sha256(model.read_bytes()).hexdigest()[:10]
    assert list(json.loads(cache_file.read_text()).values()) == [hashlib.sha256(model.read_bytes()).hexdigest()]
    assert [p.name for p in cache_file.parent.iterdir()] == ["hashes.json"]
