"""Crash-safe file writes: the one helper every Likeness write point uses.

A file is written under a temporary name in the same folder, fsynced, then renamed (or, when it
must not overwrite anything, hard-linked) to its final name, and the folder is fsynced. A process
killed at any moment, or a full disk, therefore leaves either the old file or the complete new
one under the final name, never a partial one; what it can leave is a temporary file, which
`remove_stale_temporaries` deletes (the image saver calls it on every save, the settings store
when it loads). Temporary names start with a dot and end in `.likeness-tmp`, so they never look
like an output image or a settings file.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import time
from pathlib import Path
from typing import Callable, Iterable

TEMPORARY_SUFFIX = ".likeness-tmp"
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}" + re.escape(TEMPORARY_SUFFIX) + r"$")
STALE_AFTER_SECONDS = 60.0  # a live writer finishes (or touches its file) well within a minute


def temporary_path(path: Path) -> Path:
    """A unique temporary name next to `path`, naming this process (so a restart can tell it is dead)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as stream:
        os.fsync(stream.fileno())


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(handle)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """`write(temporary_path)`, fsync, rename over `path`: readers see the old file or the whole new one.

    On any failure (a full disk, an exception in `write`) the temporary file is removed and the
    error is raised again; `path` is untouched.
    """
    path = Path(path)
    temporary = temporary_path(path)
    try:
        write(temporary)
        fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def write_text_atomically(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    write_atomically(path, lambda temporary: temporary.write_text(text, encoding=encoding))


def write_new(folder: Path, candidates: Iterable[str], write: Callable[[Path], None]) -> Path:
    """Write once to a temporary file, then publish it under the first candidate name that is free.

    The name is taken with `os.link`, which fails if the name exists: two processes numbering
    files in the same folder never overwrite each other, and the final name only ever holds a
    complete, fsynced file. Where hard links are not supported (some network and FAT file
    systems) the name is reserved with O_EXCL and the file renamed over it.
    """
    temporary = temporary_path(folder / "new")
    try:
        write(temporary)
        fsync_file(temporary)
        for name in candidates:
            final = folder / name
            try:
                os.link(temporary, final)
            except FileExistsError:
                continue
            except OSError as error:
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                try:  # no hard links here: reserve the name, then rename over the empty reservation
                    os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                except FileExistsError:
                    continue
                os.replace(temporary, final)
            fsync_folder(folder)
            return final
        raise FileExistsError(errno.EEXIST, "no free file name left", str(folder))
    finally:
        temporary.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill(pid, 0) would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: only the age rule applies
    return True


def is_temporary(name: str) -> bool:
    return TEMPORARY.match(name) is not None


def remove_stale_temporaries(folder: Path, names: Iterable[str] | None = None, now: float | None = None) -> list[Path]:
    """Delete our temporary files in `folder` left by a killed writer: those of a process that is
    gone, or older than a minute. `names` is the folder's listing when the caller already has it."""
    removed = []
    now = time.time() if now is None else now
    try:
        listing = list(names) if names is not None else os.listdir(folder)
    except OSError:
        return removed
    for name in listing:
        match = TEMPORARY.match(name)
        if not match:
            continue
        path = Path(folder) / name
        try:
            old = now - path.stat().st_mtime > STALE_AFTER_SECONDS
        except FileNotFoundError:
            continue  # its writer finished meanwhile
        if old or not _alive(int(match.group("pid"))):
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed
