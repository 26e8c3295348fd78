"""The outputs of past runs, newest first: listed from the outputs folder, filtered, paged, trashed.

Listing reads no pixels: each image's A1111 `parameters` text is read from its text chunks
(`pipelines.images.read_embedded_text`) once, then kept until the file's mtime or size changes, so
a folder of thousands of images is listed again in the time `os.scandir` takes. A damaged or
foreign file is still listed, with a note saying what is wrong with it.

Delete moves the file to `<outputs>/.trash/` (same relative path) instead of removing it, and
`restore` puts it back. Both go through `pipelines.atomic.write_new`: the file reaches its new
name complete (hard-linked, or copied and fsynced) and without overwriting anything before the
old name is removed, so a crash in between leaves the image in both places, never in neither.

    index = HistoryIndex()
    page = page_of(index.entries(outputs_dir), HistoryQuery(text="lighthouse", page=2))
    trashed = delete_image(outputs_dir, page.entries[0].relative)
    restore_image(outputs_dir, trashed)
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import threading
from pathlib import Path

from pipelines.atomic import write_new
from pipelines.errors import LikenessError
from pipelines.images import PNG_SIGNATURE, read_embedded_text
from pipelines.infotext import parse_infotext

TRASH_FOLDER = ".trash"  # a dot folder: never listed, and save_image never numbers into it
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Experiment runs keep their cells and grids here; the Experiments tab presents them, and hundreds
# of cells per run would bury the images the user generated.
SKIPPED_FOLDERS = frozenset({TRASH_FOLDER, "experiments"})
PAGE_SIZE = 24
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every complete PNG ends with


class HistoryError(LikenessError):
    pass


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
    """One listed image. `relative` is its path under the outputs folder, with "/" separators."""
    path: Path
    relative: str
    mtime_ns: int
    size: int
    infotext: str  # "" when the file carries none
    parameters: dict  # parse_infotext(infotext): "Prompt", "Negative prompt", "Model", "Seed", ...
    note: str = ""  # what is wrong with the file, for the user: damaged, no parameters

    @property
    def prompt(self) -> str:
        return self.parameters.get("Prompt", "")

    @property
    def model(self) -> str:
        return self.parameters.get("Model", "")


@dataclasses.dataclass(frozen=True)
class HistoryQuery:
    text: str = ""  # every word must appear in the prompt (any case)
    model: str = ""  # "" for all models
    page: int = 1  # 1-based; clamped to the pages there are
    page_size: int = PAGE_SIZE


@dataclasses.dataclass(frozen=True)
class HistoryPage:
    entries: list[HistoryEntry]
    page: int
    page_count: int
    matched: int  # images that pass the filter
    total: int  # images in the folder
    page_size: int

    @property
    def first_number(self) -> int:
        """The 1-based number, among the matched images, of this page's first image."""
        return (self.page - 1) * self.page_size + 1


@dataclasses.dataclass(frozen=True)
class TrashedImage:
    """Where a deleted image came from and where it lies now, both relative to the outputs folder."""
    original: str
    trashed: str


def read_entry(path: Path, relative: str, mtime_ns: int, size: int) -> HistoryEntry:
    """The entry for one file; a file that cannot be read is an entry with a note, never an error."""
    note = ""
    try:
        text, notes = read_embedded_text(path)
        text = text or ""
        if _cut_short(path):
            note = "Damaged: the file is cut short (its PNG end marker is missing); the picture may not show."
        elif not text:
            note = "No generation parameters in this file."
        elif notes:
            note = " ".join(notes)
    except LikenessError as error:
        text, note = "", f"Damaged: {error}"
    except OSError as error:
        text, note = "", f"Damaged or unreadable: {error.strerror or error}."
    parameters = parse_infotext(text) if text else {}
    return HistoryEntry(path, relative, mtime_ns, size, text, parameters, note)


def _cut_short(path: Path) -> bool:
    """A PNG that does not end with IEND: a copy or download that stopped half way (two small reads)."""
    with open(path, "rb") as file:
        if file.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
            return False
        file.seek(0, os.SEEK_END)
        if file.tell() < len(PNG_SIGNATURE) + len(_PNG_END):
            return True
        file.seek(-len(_PNG_END), os.SEEK_END)
        return file.read() != _PNG_END


class HistoryIndex:
    """The listing of outputs folders, with each file's parameters cached by (mtime, size).

    One index serves every browser session; a lock keeps two listings from updating the cache at
    the same moment. Files that disappeared simply drop out of the cache at the next listing.
    """

    def __init__(self, read=read_entry):
        self._read = read
        self._cache: dict[Path, HistoryEntry] = {}
        self._lock = threading.Lock()

    def entries(self, outputs_dir: str | os.PathLike) -> list[HistoryEntry]:
        """Every image under `outputs_dir`, newest first; [] when the folder does not exist."""
        root = Path(outputs_dir)
        found = list(_image_files(root))
        with self._lock:
            fresh: dict[Path, HistoryEntry] = {}
            for path, relative, mtime_ns, size in found:
                known = self._cache.get(path)
                if known is None or (known.mtime_ns, known.size) != (mtime_ns, size):
                    known = self._read(path, relative, mtime_ns, size)
                fresh[path] = known
            self._cache = {path: entry for path, entry in self._cache.items() if not path.is_relative_to(root)} | fresh
        return sorted(fresh.values(), key=lambda entry: (entry.mtime_ns, entry.relative), reverse=True)

    def entry(self, outputs_dir: str | os.PathLike, relative: str) -> HistoryEntry | None:
        """One image's entry (from the cache when the file has not changed); None when it is gone."""
        path = Path(outputs_dir) / relative
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        with self._lock:
            known = self._cache.get(path)
            if known is None or (known.mtime_ns, known.size) != (stat.st_mtime_ns, stat.st_size):
                known = self._cache[path] = self._read(path, relative, stat.st_mtime_ns, stat.st_size)
        return known


def _image_files(root: Path):
    """(path, relative, mtime_ns, size) of the images under `root`, without the skipped folders."""
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        try:
            with os.scandir(folder) as listing:
                items = list(listing)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for item in items:
            if item.name.startswith("."):  # the trash, and temporaries of a save in progress
                continue
            try:
                if item.is_dir():
                    if not (prefix == "" and item.name in SKIPPED_FOLDERS):
                        pending.append((Path(item.path), f"{prefix}{item.name}/"))
                elif item.name.lower().endswith(IMAGE_SUFFIXES):
                    stat = item.stat()
                    yield Path(item.path), prefix + item.name, stat.st_mtime_ns, stat.st_size
            except FileNotFoundError:
                continue  # deleted while we listed


def model_names(entries: list[HistoryEntry]) -> list[str]:
    """The models the listed images were made with, for a filter's choices."""
    return sorted({entry.model for entry in entries if entry.model}, key=str.lower)


def matches(entry: HistoryEntry, text: str, model: str) -> bool:
    if model and entry.model != model:
        return False
    prompt = entry.prompt.lower()
    return all(word in prompt for word in text.lower().split())


def page_of(entries: list[HistoryEntry], query: HistoryQuery) -> HistoryPage:
    """The `query.page`-th page of the entries that pass the filter (the last page when past the end)."""
    chosen = [entry for entry in entries if matches(entry, query.text, query.model)]
    size = max(1, query.page_size)
    page_count = max(1, math.ceil(len(chosen) / size))
    page = min(max(1, query.page), page_count)
    return HistoryPage(chosen[(page - 1) * size: page * size], page, page_count, len(chosen), len(entries), size)


def _inside(root: Path, relative: str) -> Path:
    """`root / relative`, refusing a path that leads out of `root` ("../", an absolute path)."""
    path = (root / relative).resolve()
    if not relative or not path.is_relative_to(root) or path == root:
        raise HistoryError(f"{relative!r} is not an image of the outputs folder {root}.")
    return path


def _move(source: Path, folder: Path, names) -> Path:
    """Give `source` the first free name of `names` in `folder` (never overwriting), then drop its old name."""
    folder.mkdir(parents=True, exist_ok=True)

    def place(temporary: Path) -> None:
        try:
            os.link(source, temporary)  # same file system: instant, and mtime (the order) is kept
        except FileNotFoundError:
            raise  # the source is gone: copying would fail the same way
        except OSError:
            shutil.copy2(source, temporary)  # no hard links here (FAT, some network shares)

    final = write_new(folder, names, place)
    source.unlink()
    return final


def _numbered_names(name: str, marker: str):
    stem, suffix = os.path.splitext(name)
    yield name
    for number in range(1, 10_000):
        yield f"{stem}-{marker}{number}{suffix}"


def delete_image(outputs_dir: str | os.PathLike, relative: str) -> TrashedImage:
    """Move an image to `<outputs>/.trash/<relative>`; HistoryError if it is gone already."""
    root = Path(outputs_dir).resolve()
    source = _inside(root, relative)
    if source.is_relative_to(root / TRASH_FOLDER):
        raise HistoryError(f"{relative} is already in the trash.")
    target = root / TRASH_FOLDER / Path(relative).parent
    try:
        trashed = _move(source, target, _numbered_names(source.name, "deleted"))
    except FileNotFoundError:
        raise HistoryError(f"{relative} was already deleted: it is no longer in {root}. The list has been refreshed.") from None
    except OSError as error:
        raise HistoryError(f"Could not move {relative} to the trash: {error.strerror or error}. The image was not deleted.") from error
    return TrashedImage(relative, trashed.relative_to(root).as_posix())


def restore_image(outputs_dir: str | os.PathLike, item: TrashedImage) -> str:
    """Put a trashed image back where it was (under a "-restored" name if that name was taken since);
    returns its relative path."""
    root = Path(outputs_dir).resolve()
    source = _inside(root, item.trashed)
    original = _inside(root, item.original)
    try:
        restored = _move(source, original.parent, _numbered_names(original.name, "restored"))
    except FileNotFoundError:
        raise HistoryError(f"{item.original} cannot be restored: it is no longer in the trash ({root / TRASH_FOLDER}).") from None
    except OSError as error:
        raise HistoryError(f"Could not restore {item.original}: {error.strerror or error}. It is still in the trash.") from error
    return restored.relative_to(root).as_posix()
