"""Saving images: `outputs/<date>/<number>-<seed>.png`, never overwriting, metadata kept."""
from __future__ import annotations

import datetime as dt
import errno
import itertools
import os
import re
from pathlib import Path

from PIL import Image, PngImagePlugin

from pipelines.atomic import remove_stale_temporaries, write_new
from pipelines.errors import OutputError

NUMBERED = re.compile(r"^(\d{5})[-.]")  # 00012-1234.png (a generation), 00012.png (an upscaled picture)


def png_with_parameters(image: Image.Image, infotext: str | None, more_text: dict[str, str] | None = None) -> PngImagePlugin.PngInfo:
    """A1111's `parameters` text chunk (none for a picture that came without one), then any other chunks
    (`postprocessing`: what the Extras upscale did, as A1111 records it)."""
    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    for key, text in (more_text or {}).items():
        info.add_text(key, text)
    return info


def read_parameters(image: Image.Image) -> str | None:
    """The A1111 `parameters` text of a PNG (or the EXIF UserComment of a JPEG/WebP), if any."""
    text = image.info.get("parameters")
    if text:
        return str(text)
    exif = image.getexif() if hasattr(image, "getexif") else None
    if exif:
        user_comment = exif.get_ifd(0x8769).get(0x9286)
        if isinstance(user_comment, bytes):
            # EXIF UserComment starts with an 8-byte charset marker.
            body = user_comment[8:]
            for codec in ("utf-16-be", "utf-8") if user_comment.startswith(b"UNICODE") else ("utf-8",):
                try:
                    decoded = body.decode(codec).strip("\x00")
                    if decoded:
                        return decoded
                except UnicodeDecodeError:
                    continue
        elif isinstance(user_comment, str) and user_comment:
            return user_comment
    return None


def save_image(image: Image.Image, infotext: str | None, outputs_dir: str | os.PathLike, seed: int | None,
               today: dt.date | None = None, more_text: dict[str, str] | None = None) -> Path:
    """Write the PNG under a fresh number (`<number>-<seed>.png`, or `<number>.png` without a seed); raise
    OutputError (with the reason) if the folder is unusable. `more_text`: PNG text chunks after `parameters`.

    Crash-safe (pipelines.atomic.write_new): the PNG is written and fsynced under a temporary name,
    then linked to the first free number, so a kill or a full disk never leaves a partial file under
    a numbered name, and two processes saving into the same folder never overwrite each other. Each
    save also removes temporary files a killed process left in the folder.
    """
    folder = Path(outputs_dir) / (today or dt.date.today()).isoformat()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        names = os.listdir(folder)
        remove_stale_temporaries(folder, names)
        numbers = [int(m.group(1)) for name in names if (m := NUMBERED.match(name))]
        first = max(numbers, default=-1) + 1
        suffix = "" if seed is None else f"-{seed}"
        candidates = (f"{number:05d}{suffix}.png" for number in itertools.count(first))
        return write_new(folder, candidates, lambda temporary: image.save(
            temporary, format="PNG", pnginfo=png_with_parameters(image, infotext, more_text)))
    except OSError as error:
        reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        raise OutputError(
            f"Could not save the image in {folder}: {reason}. Nothing was written; the image is still shown. "
            f"Free some space or choose a writable outputs folder (--outputs-dir or Settings)."
        ) from error
