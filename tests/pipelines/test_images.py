"""Images from outside: the size is checked from the header before any decode, and the parameters
text is read without decoding pixels, capped, wherever it stands in the file."""
from __future__ import annotations

import io
import struct
import time
import zlib

import psutil
import pytest
from PIL import Image, PngImagePlugin

from pipelines.errors import InvalidRequest
from pipelines.images import MAX_TEXT_CHARS, open_image, read_embedded_text


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_huge_png(path, side: int = 13000, text_chunks: bytes = b"") -> None:
    """A real, complete side x side 1-bit PNG (a few hundred kB: all zeros), written row by row."""
    squeeze = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    data = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + text_chunks + png_chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    write_huge_png(path, text_chunks=png_chunk(b"tEXt", b"parameters\x00a cat\nSteps: 3, Seed: 4, Size: 8x8"))
    return path


def rss() -> int:
    return psutil.Process().memory_info().rss


def test_huge_image_is_refused_from_its_header_without_decoding(huge_png):
    with pytest.warns(Image.DecompressionBombWarning), Image.open(huge_png) as check:
        assert check.size == (13000, 13000), "the fixture is what it claims"
    before = rss()
    with pytest.raises(InvalidRequest, match=r"13000x13000 pixels \(169 megapixels\).*at most 100 megapixels"):
        open_image(huge_png, what="photo 1")
    assert rss() - before < 20 * 2**20, "the pixels were decoded"


def test_image_within_the_limit_opens_lazily(tmp_path):
    path = tmp_path / "ok.png"
    Image.new("RGB", (64, 32), "red").save(path)
    image = open_image(path, max_pixels=64 * 32)
    assert image.size == (64, 32) and image.tile, "opened without decoding (the tiles are still to be read)"
    image.load()
    assert image.getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(InvalidRequest, match=r"64x32 pixels \(2,048 pixels\); Likeness opens images of at most 2,047 pixels"):
        open_image(path, max_pixels=64 * 32 - 1)


@pytest.mark.parametrize("content, message", [
    (b"", "not an image"),
    (b"hello", "not an image"),
    (b"\x89PNG\r\n\x1a\n", "not an image"),
    (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0)), "damaged|no pixels|not an image"),
])
def test_bad_files_are_messages(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(InvalidRequest, match=message):
        open_image(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InvalidRequest, match="was not found"):
        open_image(tmp_path / "absent.png")
    with pytest.raises(InvalidRequest, match="is a folder"):
        open_image(tmp_path)


def test_parameters_of_a_huge_png_read_without_decoding(huge_png):
    before = rss()
    text, notes = read_embedded_text(huge_png)
    assert text == "a cat\nSteps: 3, Seed: 4, Size: 8x8" and notes == []
    assert rss() - before < 20 * 2**20


def with_text_after_pixels(kind: bytes, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buffer, "PNG")
    raw = buffer.getvalue()
    end = raw.rindex(b"IEND") - 4
    return raw[:end] + png_chunk(kind, payload) + raw[end:]


@pytest.mark.parametrize("kind, payload", [
    (b"tEXt", b"parameters\x00p\nSteps: 3, Seed: 4, Size: 8x8"),
    (b"zTXt", b"parameters\x00\x00" + zlib.compress(b"p\nSteps: 3, Seed: 4, Size: 8x8")),
    (b"iTXt", b"parameters\x00\x00\x00\x00\x00p\nSteps: 3, Seed: 4, Size: 8x8"),
    (b"iTXt", b"parameters\x00\x01\x00en\x00\x00" + zlib.compress(b"p\nSteps: 3, Seed: 4, Size: 8x8")),
])
def test_text_chunk_after_the_pixel_data_is_found(tmp_path, kind, payload):
    path = tmp_path / "after.png"
    path.write_bytes(with_text_after_pixels(kind, payload))
    with Image.open(path) as image:
        assert "parameters" not in image.info, "PIL alone would have to decode the pixels to reach it"
    assert read_embedded_text(path) == ("p\nSteps: 3, Seed: 4, Size: 8x8", [])


def test_long_and_bomb_text_is_cut_with_a_note(tmp_path):
    path = tmp_path / "long.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "x" * 2 * 2**20)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    text, notes = read_embedded_text(path)
    assert len(text) == MAX_TEXT_CHARS and "only the first 65,536 were read" in notes[0]

    bomb = tmp_path / "bomb.png"  # 1 GiB of text in a ~1 MB zTXt chunk
    squeeze = zlib.compressobj(9)
    block = b"y" * 2**20
    compressed = b"".join(squeeze.compress(block) for _ in range(1024)) + squeeze.flush()
    bomb.write_bytes(with_text_after_pixels(b"zTXt", b"parameters\x00\x00" + compressed))
    before, started = rss(), time.perf_counter()
    text, notes = read_embedded_text(bomb)
    assert len(text) == MAX_TEXT_CHARS and notes
    assert time.perf_counter() - started < 2 and rss() - before < 50 * 2**20


def test_other_keywords_and_broken_chunks_are_no_parameters(tmp_path):
    path = tmp_path / "other.png"
    path.write_bytes(with_text_after_pixels(b"zTXt", b"parameters\x00\x00not zlib at all"))
    assert read_embedded_text(path) == (None, [])
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "Steps: 3, Seed: 4, Size: 8x8")
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    assert read_embedded_text(path) == (None, [])
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(path.read_bytes()[:60])
    assert read_embedded_text(truncated) == (None, [])


def test_jpeg_exif_comment_is_read(tmp_path):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + "a cat\nSteps: 5, Seed: 1, Size: 8x8".encode("utf-16-be")
    path = tmp_path / "p.jpg"
    Image.new("RGB", (8, 8)).save(path, exif=exif)
    assert read_embedded_text(path) == ("a cat\nSteps: 5, Seed: 1, Size: 8x8", [])
