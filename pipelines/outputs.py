"""Saving images: `outputs/<date>/<number>-<seed>.png`, never overwriting, metadata kept."""
from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from PIL import Image, PngImagePlugin

from pipelines.errors import OutputError

NUMBERED = re.compile(r"^(\d{5})-")


def png_with_parameters(image: Image.Image, infotext: str) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext)
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


def save_image(image: Image.Image, infotext: str, outputs_dir: str | os.PathLike, seed: int, today: dt.date | None = None) -> Path:
    """Write the PNG under a fresh number; raise OutputError (with the reason) if the folder is unusable."""
    folder = Path(outputs_dir) / (today or dt.date.today()).isoformat()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(1)) for name in os.listdir(folder) if (m := NUMBERED.match(name))]
        number = max(numbers, default=-1) + 1
        while True:
            path = folder / f"{number:05d}-{seed}.png"
            try:
                # O_EXCL: if another process took this number in between, take the next one.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                number += 1
                continue
            with os.fdopen(fd, "wb") as handle:
                image.save(handle, format="PNG", pnginfo=png_with_parameters(image, infotext))
            return path
    except OSError as error:
        raise OutputError(
            f"Could not save the image in {folder}: {error.strerror or error}. The image is still shown; "
            f"choose a writable outputs folder (--outputs-dir or Settings)."
        ) from error
