"""Damaged and hostile files through aidetect.data.open_image: decompression bombs and broken
files, each refused with one `ImageError` line, never another exception.

Every file is generated here, small, with Pillow and numpy.
"""

from __future__ import annotations

import io
import random
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import touch
from decoding_helpers import near, noise, save_image
from PIL import Image

from aidetect.data import (
    DEFAULT_MAX_PIXELS,
    open_image,
)
from aidetect.errors import ImageError

# --- decompression bombs ------------------------------------------------------------------------
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels, with almost no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def test_images_over_max_pixels_are_refused(tmp_path: Path):
    path = save_image(noise((100, 100)), tmp_path / "big.png")
    with pytest.raises(ImageError) as info:
        open_image(path, max_pixels=1000)
    message = info.value.message
    assert "--max-pixels" in message and "100x100" in message and "\n" not in message
    with pytest.raises(ImageError, match="--max-pixels"):
        open_image(path, max_pixels=9_999)
    assert open_image(path, max_pixels=10_000).width == 100  # the limit itself is allowed


@pytest.mark.parametrize("no_limit", [0, None])
def test_max_pixels_zero_or_none_means_no_limit(tmp_path: Path, no_limit):
    path = save_image(noise((100, 100)), tmp_path / "big.png")
    assert open_image(path, max_pixels=no_limit).width == 100


def test_the_default_limit_refuses_a_huge_header_before_decoding(tmp_path: Path):
    assert DEFAULT_MAX_PIXELS == 89_478_485  # Pillow's own warning threshold
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(50_000, 50_000))  # 2.5 gigapixels, 7.5 GB as RGB
    with pytest.raises(ImageError, match="decompression bomb.*--max-pixels"):
        open_image(path)


def test_pillows_global_pixel_limit_is_restored_and_not_used(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # far below the images here
    good = save_image(noise((100, 100)), tmp_path / "good.png")
    assert open_image(good).width == 100  # our limit applies, not Pillow's
    assert Image.MAX_IMAGE_PIXELS == 50
    with pytest.raises(ImageError, match="--max-pixels"):
        open_image(good, max_pixels=10)
    assert Image.MAX_IMAGE_PIXELS == 50
    text = touch(tmp_path / "text.png", b"not an image at all")
    with pytest.raises(ImageError):
        open_image(text)
    assert Image.MAX_IMAGE_PIXELS == 50
    whole = good.read_bytes()
    cut = touch(tmp_path / "cut.png", whole[: len(whole) // 2])
    with pytest.raises(ImageError):
        open_image(cut)
    assert Image.MAX_IMAGE_PIXELS == 50


# --- broken files -------------------------------------------------------------------------------
def _truncated(tmp_path: Path, fmt: str) -> Path:
    whole = io.BytesIO()
    noise((64, 64)).save(whole, fmt)
    data = whole.getvalue()
    return touch(tmp_path / f"cut.{fmt.lower()}", data[: len(data) // 2])


def test_a_truncated_jpeg_is_an_error(tmp_path: Path):
    with pytest.raises(ImageError, match="truncated"):
        open_image(_truncated(tmp_path, "JPEG"))


def test_a_truncated_png_is_an_error(tmp_path: Path):
    with pytest.raises(ImageError):
        open_image(_truncated(tmp_path, "PNG"))


def test_an_empty_file_is_an_error(tmp_path: Path):
    with pytest.raises(ImageError, match="empty file"):
        open_image(touch(tmp_path / "empty.jpg", b""))


def test_text_named_jpg_is_an_error(tmp_path: Path):
    path = touch(tmp_path / "notes.jpg", b"Dear diary,\nthis is not a JPEG.\n")
    with pytest.raises(ImageError, match="not a supported image"):
        open_image(path)


def test_random_bytes_are_an_error(tmp_path: Path):
    path = touch(tmp_path / "noise.png", np.random.RandomState(0).bytes(2048))
    with pytest.raises(ImageError, match="not a supported image"):
        open_image(path)


def test_a_png_with_damaged_pixel_data_is_an_error(tmp_path: Path):
    whole = io.BytesIO()
    noise((64, 64)).save(whole, "PNG")
    data = bytearray(whole.getvalue())
    start = data.index(b"IDAT") + 4 + 16  # past the chunk type and the zlib header
    data[start: start + 64] = bytes(b ^ 0xFF for b in data[start: start + 64])
    with pytest.raises(ImageError):
        open_image(touch(tmp_path / "damaged.png", bytes(data)))


def test_a_missing_file_or_a_folder_is_an_error(tmp_path: Path):
    with pytest.raises(ImageError, match="no such file"):
        open_image(tmp_path / "missing.png")
    with pytest.raises(ImageError):
        open_image(tmp_path)


def _png_with_a_bad_second_chunk() -> bytes:
    """Pixel data split over two IDAT chunks, the second with a garbage type (SyntaxError)."""
    whole = io.BytesIO()
    noise((16, 16)).save(whole, "PNG")
    data = whole.getvalue()
    start = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[start: start + 4])[0]
    pixels = data[start + 8: start + 8 + length]
    half = len(pixels) // 2
    return (data[:start] + _png_chunk(b"IDAT", pixels[:half])
            + struct.pack(">I", len(pixels) - half) + b"9\xfc|\x00" + pixels[half:]
            + b"\x00" * 4 + _png_chunk(b"IEND", b""))


def _broken_files(tmp_path: Path) -> list[Path]:
    good = io.BytesIO()
    noise((32, 32)).save(good, "PNG")
    short_header = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)[:5]  # ValueError in Pillow
    return [
        touch(tmp_path / "empty.jpg", b""),
        touch(tmp_path / "text.jpg", b"line one\nline two\n"),
        touch(tmp_path / "random.webp", np.random.RandomState(1).bytes(300)),
        touch(tmp_path / "magic-only.png", good.getvalue()[:8]),
        touch(tmp_path / "header-only.png", good.getvalue()[:33]),
        _truncated(tmp_path, "JPEG"),
        _truncated(tmp_path, "PNG"),
        _truncated(tmp_path, "GIF"),
        _truncated(tmp_path, "WEBP"),
        _truncated(tmp_path, "BMP"),
        _truncated(tmp_path, "TIFF"),
        save_image(Image.new("RGB", (8, 8)), tmp_path / "image.ico", "ICO"),
        touch(tmp_path / "short-ihdr.png", PNG_SIGNATURE + _png_chunk(b"IHDR", short_header)),
        touch(tmp_path / "bad-chunk.png", _png_with_a_bad_second_chunk()),
        tmp_path / "missing.png",
        tmp_path,
    ]


def test_every_failure_is_an_image_error_with_a_one_line_message(tmp_path: Path):
    for path in _broken_files(tmp_path):
        with pytest.raises(ImageError) as info:
            open_image(path)
        assert type(info.value) is ImageError, path
        message = info.value.message
        assert message and "\n" not in message, (path, message)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_damaged_files_never_raise_anything_but_image_error(tmp_path: Path, fmt: str):
    # Deterministic damage: cuts at many lengths and bytes overwritten, headers included.
    whole = io.BytesIO()
    noise((16, 16)).save(whole, fmt)
    data = whole.getvalue()
    rng = random.Random(fmt)
    variants = [data[:n] for n in range(1, len(data), max(1, len(data) // 25))]
    for _ in range(40):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            reach = 64 if rng.random() < 0.5 else len(damaged)
            damaged[rng.randrange(min(reach, len(damaged)))] = rng.randrange(256)
        variants.append(bytes(damaged))
    path = tmp_path / "damaged.img"
    errors = 0
    for variant in variants:
        path.write_bytes(variant)
        try:
            decoded = open_image(path)
        except ImageError as error:
            errors += 1
            assert error.message and "\n" not in error.message
        else:
            assert decoded.image.mode == "RGB"
            assert decoded.image.size == (decoded.width, decoded.height)
    assert errors >= len(variants) // 3  # the cuts at least were refused


def test_damaged_metadata_decodes_without_warnings(tmp_path: Path):
    # An EXIF block whose directory claims more entries than it holds: Pillow warns "Corrupt
    # EXIF data" while reading it. Nothing may escape (the engine never prints), not even where
    # warnings are errors (python -W error), and the pixels still decode.
    exif = (b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05"
            b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00")
    path = save_image(Image.new("RGB", (8, 8), (10, 20, 30)), tmp_path / "exif.jpg", exif=exif)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoded = open_image(path)
    assert caught == []
    assert near(decoded.image.getpixel((4, 4)), (10, 20, 30))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_image(path).width == 8


