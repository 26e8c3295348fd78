"""Images that come from outside (uploads, the API, files named on the command line), opened
without trusting them.

A PNG of a few hundred kilobytes can say it is 13000x13000 pixels and take gigabytes to decode.
`open_image` opens a file lazily, reads the size from its header and refuses it *before* a single
pixel is decoded. `read_embedded_text` reads the generation parameters of an image (PNG text chunks,
or the EXIF comment of a JPEG/WebP) without decoding pixels at all, and caps what it reads.

    image = open_image(path, max_pixels=MAX_PHOTO_PIXELS, what="photo 1")  # InvalidRequest if too big
    image.load()                                                           # now decode

    text, notes = read_embedded_text(path)  # (None, []) when the image carries no parameters
"""
from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pipelines.errors import InvalidRequest
from pipelines.outputs import read_parameters

MAX_PHOTO_PIXELS = 100_000_000  # 100 megapixels: any camera photo; 13000x13000 (169 MP, ~2 GB RGB) is not
MAX_TEXT_CHARS = 64 * 1024  # A1111 parameters are a few hundred characters; 64 KiB is far beyond any real one
_MAX_TEXT_BYTES = 4 * MAX_TEXT_CHARS  # bytes read from one text chunk (UTF-8 takes up to 4 bytes a character)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.3g} megapixels" if pixels >= 10**6 else f"{pixels:,} pixels"


def check_pixels(size: tuple[int, int], max_pixels: int, what: str, error: type[InvalidRequest] = InvalidRequest) -> None:
    """Refuse a (width, height) above `max_pixels`, naming the size and the limit."""
    width, height = size
    if width <= 0 or height <= 0:
        raise error(f"{what} has no pixels ({width}x{height}); the file is damaged.")
    if width * height > max_pixels:
        raise error(
            f"{what} is {width}x{height} pixels ({megapixels(width * height)}); Likeness opens images of at most "
            f"{megapixels(max_pixels)}. Scale it down and try again."
        )


def open_image(source, *, max_pixels: int = MAX_PHOTO_PIXELS, what: str = "The image",
               error: type[InvalidRequest] = InvalidRequest) -> Image.Image:
    """Open a path, bytes or binary file lazily: the header is read, no pixel is decoded yet.

    Raises `error` (InvalidRequest or a subclass) with a message for the user when the file is
    missing, is not an image, or is larger than `max_pixels` (checked from the header, before the
    decode; PIL's own decompression-bomb limit is reported the same way). Call `.load()` to decode.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)) and Path(source).is_dir():
        raise error(f"{source} is a folder, not an image.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            image = Image.open(source)
    except FileNotFoundError:
        raise error(f"{what} was not found: {source}.") from None
    except Image.DecompressionBombError as bomb:
        raise error(f"{what} is too large to open safely ({bomb}); Likeness opens images of at most {megapixels(max_pixels)}.") from None
    except UnidentifiedImageError:
        raise error(f"{what} is not an image Likeness can read. Use a PNG, JPEG or WebP file.") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as damaged:
        raise error(f"{what} is damaged or incomplete and cannot be read ({damaged}).") from None
    try:
        check_pixels(image.size, max_pixels, what, error)
    except InvalidRequest:
        image.close()
        raise
    return image


INPUT_LIMIT_HINT = "The limit is the max_input_megapixels setting (Settings: Largest input image)."


def check_input_pixels(size: tuple[int, int], max_pixels: int, what: str) -> None:
    """`check_pixels` for init images and masks: the message also names the setting that sets the limit."""
    try:
        check_pixels(size, max_pixels, what)
    except InvalidRequest as error:
        raise InvalidRequest(f"{error} {INPUT_LIMIT_HINT}") from None


def open_input_image(source, max_pixels: int, what: str) -> Image.Image:
    """An init image or mask (a path or bytes) opened and decoded for img2img / inpainting.

    The size is read from the header and refused above `max_pixels` (naming the limit and its
    setting) before any pixel is decoded; a missing, non-image or damaged file is an InvalidRequest.
    """
    try:
        image = open_image(source, max_pixels=max_pixels, what=what)
    except InvalidRequest as error:
        if f"at most {megapixels(max_pixels)}" in str(error):  # too large: say which setting sets the limit
            raise InvalidRequest(f"{error} {INPUT_LIMIT_HINT}") from None
        raise
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as damaged:
        image.close()
        raise InvalidRequest(f"{what} is damaged or incomplete and cannot be read ({damaged}).") from None
    return image


def read_embedded_text(source, max_chars: int = MAX_TEXT_CHARS) -> tuple[str | None, list[str]]:
    """The A1111 `parameters` text of an image (a path or its bytes), read without decoding pixels, and notes.

    PNG: the `parameters` tEXt/zTXt/iTXt chunk, wherever it stands (before or after the pixel
    data; PIL would decode the pixels to reach one after them). JPEG/WebP/others: the EXIF
    UserComment. Text longer than `max_chars` is cut there, and a note says so. Raises
    InvalidRequest for a file that is not an image or is damaged before its text.
    """
    with (io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else open(source, "rb")) as file:
        head = file.read(len(PNG_SIGNATURE))
        file.seek(0)
        if head == PNG_SIGNATURE:
            text = _png_text(file)
        else:
            with open_image(file, what="This file") as image:  # header and EXIF only: no pixel is decoded
                try:
                    text = read_parameters(image)
                except Exception:  # a broken EXIF block: the file simply carries no readable parameters
                    text = None
    notes: list[str] = []
    if text is not None and len(text) > max_chars:
        notes.append(f"The parameters text is longer than {max_chars:,} characters; only the first {max_chars:,} were read.")
        text = text[:max_chars]
    return text, notes


def _png_text(file) -> str | None:
    """Walk a PNG's chunks, skipping the pixel data unread, to the `parameters` text chunk."""
    file.seek(len(PNG_SIGNATURE))
    seen_header = False
    while True:
        header = file.read(8)
        if len(header) < 8:
            if not seen_header:
                raise InvalidRequest("This PNG is damaged: it ends before its header.")
            return None  # a truncated file: whatever text came before the cut was looked at
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IHDR":
            seen_header = True
        elif not seen_header:
            raise InvalidRequest("This PNG is damaged: it does not start with its header chunk.")
        if kind == b"IEND":
            return None
        if kind in _PNG_TEXT_CHUNKS:
            data = file.read(min(length, _MAX_TEXT_BYTES + 1024))
            file.seek(length - len(data) + 4, io.SEEK_CUR)  # the rest, and the CRC
            text = _decode_text_chunk(kind, data)
            if text is not None:
                return text
        else:
            file.seek(length + 4, io.SEEK_CUR)  # pixel data and everything else: skipped, never read


def _decode_text_chunk(kind: bytes, data: bytes) -> str | None:
    """The text of a `parameters` chunk, or None for other keywords and for chunks that do not decode."""
    keyword, sep, rest = data.partition(b"\x00")
    if not sep or keyword != b"parameters":
        return None
    try:
        if kind == b"tEXt":
            return rest.decode("latin-1")
        if kind == b"zTXt":
            return _inflate(rest[1:]).decode("latin-1")  # rest[0]: the compression method (always 0)
        compressed, method = rest[:1], rest[1:2]
        _language, _, rest = rest[2:].partition(b"\x00")
        _translated, _, body = rest.partition(b"\x00")
        if compressed == b"\x01" and method == b"\x00":
            body = _inflate(body)
        return body.decode("utf-8", errors="replace")
    except zlib.error:
        return None


def _inflate(data: bytes) -> bytes:
    """zlib-decompress at most a bounded amount: a 1 kB chunk can expand to gigabytes."""
    return zlib.decompressobj().decompress(data, _MAX_TEXT_BYTES)
