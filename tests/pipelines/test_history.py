"""pipelines.history: listing the outputs folder newest first, paging, filtering, trash and undo."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from PIL import Image

from pipelines.history import (HistoryError, HistoryIndex, HistoryQuery, TrashedImage, delete_image, model_names, page_of,
                               read_entry, restore_image)
from pipelines.infotext import build_infotext
from pipelines.outputs import png_with_parameters


def write_png(path: Path, prompt: str = "a cat", model: str = "demo", age_s: float = 0.0, seed: int = 1) -> Path:
    """A small PNG carrying A1111 parameters, its mtime `age_s` seconds in the past."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = build_infotext(prompt, "", {"Steps": 4, "Seed": seed, "Size": "8x8", "Model": model})
    Image.new("RGB", (8, 8), (seed % 255, 0, 0)).save(path, format="PNG", pnginfo=png_with_parameters(None, text))
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


@pytest.fixture
def outputs(tmp_path) -> Path:
    return tmp_path / "outputs"


def test_newest_first_and_paged(outputs):
    for number in range(30):  # number 29 is the newest
        write_png(outputs / "2026-12-01" / f"{number:05d}-{number}.png", prompt=f"image {number}", age_s=100 - number)
    entries = HistoryIndex().entries(outputs)
    first = page_of(entries, HistoryQuery(page=1, page_size=24))
    assert [e.relative for e in first.entries[:2]] == ["2026-12-01/00029-29.png", "2026-12-01/00028-28.png"]
    assert (first.page, first.page_count, first.matched, first.total, len(first.entries)) == (1, 2, 30, 30, 24)
    second = page_of(entries, HistoryQuery(page=2, page_size=24))
    assert [e.prompt for e in second.entries] == [f"image {n}" for n in range(5, -1, -1)]
    past_the_end = page_of(entries, HistoryQuery(page=99, page_size=24))
    assert past_the_end.page == 2 and past_the_end.entries == second.entries
    assert page_of(entries, HistoryQuery(page=0)).page == 1


def test_filter_by_prompt_words_and_model(outputs):
    write_png(outputs / "d" / "00000-1.png", prompt="A Lighthouse at dusk, oil painting", model="sd15", age_s=3)
    write_png(outputs / "d" / "00001-2.png", prompt="a lighthouse in fog", model="sdxl", age_s=2)
    write_png(outputs / "d" / "00002-3.png", prompt="portrait of a dog", model="sd15", age_s=1)
    entries = HistoryIndex().entries(outputs)
    names = lambda query: [e.relative for e in page_of(entries, query).entries]  # noqa: E731
    assert names(HistoryQuery(text="lighthouse")) == ["d/00001-2.png", "d/00000-1.png"]
    assert names(HistoryQuery(text="DUSK lighthouse")) == ["d/00000-1.png"]  # every word, any case, any order
    assert names(HistoryQuery(model="sd15")) == ["d/00002-3.png", "d/00000-1.png"]
    assert names(HistoryQuery(text="lighthouse", model="sd15")) == ["d/00000-1.png"]
    empty = page_of(entries, HistoryQuery(text="castle"))
    assert (empty.entries, empty.matched, empty.total, empty.page_count) == ([], 0, 3, 1)
    assert model_names(entries) == ["sd15", "sdxl"]


def test_damaged_and_bare_files_are_listed_with_a_note(outputs):
    write_png(outputs / "d" / "00000-1.png", age_s=3)
    (outputs / "d" / "00001-2.png").write_bytes(b"not a png at all")
    good = (outputs / "d" / "00000-1.png").read_bytes()
    (outputs / "d" / "00002-3.png").write_bytes(good[:20])  # cut inside the header chunk
    Image.new("RGB", (4, 4)).save(outputs / "d" / "00003-4.png")  # no parameters
    notes = {e.relative: e.note for e in HistoryIndex().entries(outputs)}
    assert notes["d/00000-1.png"] == ""
    assert notes["d/00001-2.png"].startswith("Damaged")
    assert notes["d/00002-3.png"].startswith("Damaged")
    assert notes["d/00003-4.png"] == "No generation parameters in this file."


def test_missing_folder_lists_nothing(tmp_path):
    assert HistoryIndex().entries(tmp_path / "never-made") == []
    assert page_of([], HistoryQuery()).page_count == 1


def test_trash_experiments_temporaries_and_other_files_are_not_listed(outputs):
    write_png(outputs / "d" / "00000-1.png")
    write_png(outputs / ".trash" / "d" / "00001-2.png")
    write_png(outputs / "experiments" / "20261201-1" / "cell.png")
    write_png(outputs / "d" / ".new.123-abcdef01.likeness-tmp")
    (outputs / "d" / "notes.txt").write_text("x")
    assert [e.relative for e in HistoryIndex().entries(outputs)] == ["d/00000-1.png"]


def test_listing_reads_each_file_once_until_it_changes(outputs):
    reads = []

    def counting(path, relative, mtime_ns, size):
        reads.append(relative)
        return read_entry(path, relative, mtime_ns, size)

    for number in range(1500):  # a folder of thousands: the second listing reads no file
        write_png(outputs / "d" / f"{number:05d}-{number}.png", prompt=f"p{number}", age_s=2000 - number)
    index = HistoryIndex(read=counting)
    started = time.perf_counter()
    assert len(index.entries(outputs)) == 1500
    first_s = time.perf_counter() - started
    assert len(reads) == 1500
    reads.clear()
    started = time.perf_counter()
    assert index.entries(outputs)[0].prompt == "p1499"
    again_s = time.perf_counter() - started
    assert reads == []
    assert again_s < first_s, (again_s, first_s)
    write_png(outputs / "d" / "00007-7.png", prompt="changed")  # rewritten: now the newest
    (outputs / "d" / "00008-8.png").unlink()
    listed = index.entries(outputs)
    assert reads == ["d/00007-7.png"]
    assert listed[0].prompt == "changed" and len(listed) == 1499


def test_delete_moves_to_trash_and_undo_puts_it_back_in_its_place(outputs):
    older = write_png(outputs / "d" / "00000-1.png", age_s=10)
    write_png(outputs / "d" / "00001-2.png", age_s=5)
    index = HistoryIndex()
    trashed = delete_image(outputs, "d/00000-1.png")
    assert trashed == TrashedImage("d/00000-1.png", ".trash/d/00000-1.png")
    assert not older.exists() and (outputs / ".trash" / "d" / "00000-1.png").exists()
    assert [e.relative for e in index.entries(outputs)] == ["d/00001-2.png"]
    assert restore_image(outputs, trashed) == "d/00000-1.png"
    assert not (outputs / ".trash" / "d" / "00000-1.png").exists()
    assert [e.relative for e in index.entries(outputs)] == ["d/00001-2.png", "d/00000-1.png"]  # mtime kept
    assert read_entry(older, "d/00000-1.png", 0, 0).parameters["Seed"] == "1"


def test_delete_twice_and_restore_twice_say_what_happened(outputs):
    write_png(outputs / "d" / "00000-1.png")
    trashed = delete_image(outputs, "d/00000-1.png")
    with pytest.raises(HistoryError, match="already deleted"):
        delete_image(outputs, "d/00000-1.png")
    restore_image(outputs, trashed)
    with pytest.raises(HistoryError, match="no longer in the trash"):
        restore_image(outputs, trashed)


def test_names_taken_meanwhile_are_not_overwritten(outputs):
    write_png(outputs / "d" / "00000-1.png", prompt="first")
    first = delete_image(outputs, "d/00000-1.png")
    write_png(outputs / "d" / "00000-1.png", prompt="second")  # the number was used again
    second = delete_image(outputs, "d/00000-1.png")
    assert second.trashed == ".trash/d/00000-1-deleted1.png"
    write_png(outputs / "d" / "00000-1.png", prompt="third")
    assert restore_image(outputs, first) == "d/00000-1-restored1.png"
    prompts = {e.relative: e.prompt for e in HistoryIndex().entries(outputs)}
    assert prompts == {"d/00000-1.png": "third", "d/00000-1-restored1.png": "first"}


@pytest.mark.parametrize("relative", ["../outside.png", "/etc/passwd", "", ".trash/d/00000-1.png"])
def test_paths_outside_the_outputs_folder_are_refused(outputs, relative):
    write_png(outputs / ".trash" / "d" / "00000-1.png")
    (outputs.parent / "outside.png").write_bytes(b"x")
    with pytest.raises(HistoryError):
        delete_image(outputs, relative)
    assert (outputs.parent / "outside.png").exists()


def test_one_entry_is_read_from_the_cache_and_none_once_gone(outputs):
    reads = []
    index = HistoryIndex(read=lambda *args: reads.append(args[1]) or read_entry(*args))
    write_png(outputs / "d" / "00000-1.png", prompt="kept")
    index.entries(outputs)
    assert index.entry(outputs, "d/00000-1.png").prompt == "kept"
    assert reads == ["d/00000-1.png"]  # listed once, not read again for the details
    (outputs / "d" / "00000-1.png").unlink()
    assert index.entry(outputs, "d/00000-1.png") is None
