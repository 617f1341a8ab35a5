"""Decoding each image safely to 8-bit RGB (aidetect.data.open_image): formats by content,
decompression bombs, broken files, modes to RGB, orientation, animations.

Every image is generated here, small, with Pillow and numpy.
"""

from __future__ import annotations

import dataclasses
import io
import random
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import touch
from PIL import Image

from aidetect.data import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    open_image,
    to_rgb,
)
from aidetect.errors import ImageError

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _save(image: Image.Image, path: Path, fmt: str | None = None, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **options)
    return path


def _pixels(image: Image.Image) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in p) for p in np.asarray(image).reshape(-1, 3)]


def _near(pixel, expected, tolerance: int = 12) -> bool:
    return all(abs(int(a) - int(b)) <= tolerance for a, b in zip(pixel, expected, strict=True))


def _noise(size=(24, 16), seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# --- decoding: formats, by content --------------------------------------------------------------
@pytest.mark.parametrize("fmt, options", [
    ("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {}),
    ("GIF", {}), ("TIFF", {}),
])
def test_each_allowed_format_decodes_by_content_whatever_the_extension(
        tmp_path: Path, fmt: str, options: dict):
    image = Image.new("RGB", (12, 7), (40, 90, 200))
    path = _save(image, tmp_path / "picture.dat", fmt, **options)
    decoded = open_image(path)
    assert isinstance(decoded, DecodedImage)
    assert fmt in ALLOWED_FORMATS
    assert decoded.format == fmt
    assert (decoded.width, decoded.height) == (12, 7)
    assert decoded.image.mode == "RGB" and decoded.image.size == (12, 7)
    assert _near(decoded.image.getpixel((6, 3)), (40, 90, 200), tolerance=6)


def test_a_png_named_jpg_decodes_as_png(tmp_path: Path):
    path = _save(Image.new("RGB", (5, 3), GREEN), tmp_path / "fake.jpg", "PNG")
    decoded = open_image(path)
    assert (decoded.format, decoded.mode, decoded.width, decoded.height) == ("PNG", "RGB", 5, 3)
    assert decoded.image.getpixel((0, 0)) == GREEN


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "PCX"])
def test_formats_outside_the_allow_list_are_refused(tmp_path: Path, fmt: str):
    assert fmt not in ALLOWED_FORMATS
    path = _save(Image.new("RGB", (16, 16), RED), tmp_path / "image.jpg", fmt)
    assert Image.open(path).format == fmt  # Pillow itself could decode it
    with pytest.raises(ImageError, match="not a supported image"):
        open_image(path)


def test_decoded_image_fields(tmp_path: Path):
    path = _save(Image.new("P", (9, 4)), tmp_path / "p.png")
    decoded = open_image(path)
    assert (decoded.format, decoded.mode, decoded.width, decoded.height) == ("PNG", "P", 9, 4)
    assert decoded.image.mode == "RGB" and decoded.image.size == (9, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.width = 3  # type: ignore[misc]


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
    path = _save(_noise((100, 100)), tmp_path / "big.png")
    with pytest.raises(ImageError) as info:
        open_image(path, max_pixels=1000)
    message = info.value.message
    assert "--max-pixels" in message and "100x100" in message and "\n" not in message
    with pytest.raises(ImageError, match="--max-pixels"):
        open_image(path, max_pixels=9_999)
    assert open_image(path, max_pixels=10_000).width == 100  # the limit itself is allowed


@pytest.mark.parametrize("no_limit", [0, None])
def test_max_pixels_zero_or_none_means_no_limit(tmp_path: Path, no_limit):
    path = _save(_noise((100, 100)), tmp_path / "big.png")
    assert open_image(path, max_pixels=no_limit).width == 100


def test_the_default_limit_refuses_a_huge_header_before_decoding(tmp_path: Path):
    assert DEFAULT_MAX_PIXELS == 89_478_485  # Pillow's own warning threshold
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(50_000, 50_000))  # 2.5 gigapixels, 7.5 GB as RGB
    with pytest.raises(ImageError, match="decompression bomb.*--max-pixels"):
        open_image(path)


def test_pillows_global_pixel_limit_is_restored_and_not_used(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # far below the images here
    good = _save(_noise((100, 100)), tmp_path / "good.png")
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
    _noise((64, 64)).save(whole, fmt)
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
    _noise((64, 64)).save(whole, "PNG")
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
    _noise((16, 16)).save(whole, "PNG")
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
    _noise((32, 32)).save(good, "PNG")
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
        _save(Image.new("RGB", (8, 8)), tmp_path / "image.ico", "ICO"),
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
    _noise((16, 16)).save(whole, fmt)
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
    path = _save(Image.new("RGB", (8, 8), (10, 20, 30)), tmp_path / "exif.jpg", exif=exif)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoded = open_image(path)
    assert caught == []
    assert _near(decoded.image.getpixel((4, 4)), (10, 20, 30))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_image(path).width == 8


# --- decoding: modes to RGB ---------------------------------------------------------------------
def test_exif_orientation_is_applied(tmp_path: Path):
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 10, 10))  # the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(stored, tmp_path / "rotated.jpg", quality=95, exif=exif.tobytes())
    decoded = open_image(path)
    assert (decoded.width, decoded.height) == (20, 40)
    assert decoded.image.size == (20, 40)
    assert _near(decoded.image.getpixel((15, 4)), RED)  # now the top-right corner
    for corner in [(4, 4), (4, 35), (15, 35)]:
        assert _near(decoded.image.getpixel(corner), BLUE), corner
    plain = open_image(_save(stored, tmp_path / "plain.jpg", quality=95))
    assert (plain.width, plain.height) == (40, 20)
    assert _near(plain.image.getpixel((4, 4)), RED)


@pytest.mark.parametrize("mode", ["L", "I;16", "RGBA", "RGB"])
def test_exif_orientation_of_uncompressed_tiffs(tmp_path: Path, mode: str):
    """Pillow memory-maps these (not RGB) and, with orientation 6, laid them out 80x40 with
    scrambled pixels: an 80x40 TIFF must decode as 40x80, its top-left corner at top-right."""
    stored = np.zeros((40, 80), dtype=np.uint8)
    stored[:10, :10] = 255  # the stored top-left corner
    if mode == "I;16":
        image = Image.fromarray(stored.astype(np.uint16) * 257)
    elif mode == "L":
        image = Image.fromarray(stored)
    else:
        image = Image.fromarray(stored).convert(mode)
    assert image.mode == mode
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / f"rotated-{mode.replace(';', '')}.tiff"
    image.save(path, exif=exif)
    decoded = open_image(path)
    assert (decoded.width, decoded.height) == (40, 80) and decoded.mode == mode
    expected = np.zeros((80, 40), dtype=np.uint8)
    expected[:10, -10:] = 255  # now the top-right corner
    gray = np.asarray(decoded.image.convert("L"))
    if mode == "RGBA":  # opaque white and black composite to themselves
        assert np.array_equal(gray, expected)
    else:
        assert np.array_equal(gray > 127, expected > 127)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_is_composited_on_white(tmp_path: Path, fmt: str):
    image = Image.new("P", (4, 1))
    image.putpalette([*RED, *GREEN, *BLUE] + [0, 0, 0] * 253)
    image.putdata([0, 1, 2, 1])
    path = _save(image, tmp_path / f"p.{fmt.lower()}", fmt, transparency=1)
    decoded = open_image(path)
    assert decoded.mode == "P"
    assert _pixels(decoded.image) == [RED, WHITE, BLUE, WHITE]


def test_rgba_alpha_is_composited_on_white(tmp_path: Path):
    image = Image.new("RGBA", (3, 1))
    image.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 100, 0, 128)])
    decoded = open_image(_save(image, tmp_path / "rgba.png"))
    assert decoded.mode == "RGBA" and decoded.image.mode == "RGB"
    transparent, opaque, half = _pixels(decoded.image)
    assert transparent == WHITE
    assert opaque == BLUE
    assert _near(half, (127, 177, 127), tolerance=1)


def test_la_alpha_is_composited_on_white(tmp_path: Path):
    image = Image.new("LA", (2, 1))
    image.putdata([(50, 0), (50, 255)])
    decoded = open_image(_save(image, tmp_path / "la.png"))
    assert decoded.mode == "LA"
    assert _pixels(decoded.image) == [WHITE, (50, 50, 50)]


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path: Path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    decoded = open_image(_save(Image.fromarray(values), tmp_path / "gray16.png"))
    assert decoded.mode == "I;16"
    assert _pixels(decoded.image) == [(0, 0, 0), (1, 1, 1), (128, 128, 128), (255, 255, 255)]


def test_other_sixteen_bit_modes_are_scaled():
    big_endian = Image.frombytes("I;16B", (3, 1), bytes([0xFF, 0xFF, 0x01, 0x01, 0x80, 0x00]))
    assert _pixels(to_rgb(big_endian)) == [(255,) * 3, (1,) * 3, (128,) * 3]
    wide = Image.fromarray(np.array([[0, 32768, 65535, 70000, -5]], dtype=np.int32))
    assert wide.mode == "I"
    assert _pixels(to_rgb(wide)) == [(0,) * 3, (128,) * 3, (255,) * 3, (255,) * 3, (0,) * 3]


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path):
    image = Image.new("CMYK", (16, 8), (255, 0, 0, 0))  # full cyan
    image.paste((0, 0, 0, 0), (8, 0, 16, 8))  # white
    decoded = open_image(_save(image, tmp_path / "cmyk.jpg", quality=95))
    assert (decoded.format, decoded.mode, decoded.image.mode) == ("JPEG", "CMYK", "RGB")
    assert _near(decoded.image.getpixel((2, 4)), (0, 255, 255))
    assert _near(decoded.image.getpixel((13, 4)), WHITE)


def test_gray_and_bilevel_are_replicated(tmp_path: Path):
    gray = Image.new("L", (3, 1))
    gray.putdata([0, 77, 200])
    decoded = open_image(_save(gray, tmp_path / "gray.png"))
    assert decoded.mode == "L"
    assert _pixels(decoded.image) == [(0, 0, 0), (77, 77, 77), (200, 200, 200)]
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    decoded = open_image(_save(bilevel, tmp_path / "bilevel.png"))
    assert decoded.mode == "1"
    assert _pixels(decoded.image) == [(0, 0, 0), WHITE]


def test_rgb_passes_through_unchanged():
    image = _noise((5, 4))
    assert to_rgb(image) is image


@pytest.mark.parametrize("fmt, options", [
    ("GIF", {"duration": 100, "loop": 0}),
    ("WEBP", {"duration": 100, "lossless": True}),
    ("TIFF", {}),
])
def test_animations_and_multi_page_files_give_the_first_frame(
        tmp_path: Path, fmt: str, options: dict):
    frames = [Image.new("RGB", (8, 6), colour) for colour in (RED, GREEN, BLUE)]
    path = _save(frames[0], tmp_path / f"frames.{fmt.lower()}", fmt, save_all=True,
                 append_images=frames[1:], **options)
    with Image.open(path) as check:
        assert check.n_frames == 3  # the file really holds three frames
    decoded = open_image(path)
    assert decoded.format == fmt and (decoded.width, decoded.height) == (8, 6)
    assert set(_pixels(decoded.image)) == {RED}


def test_animation_whose_first_frame_is_not_red_still_gives_the_first_frame(tmp_path: Path):
    frames = [Image.new("RGB", (8, 6), colour) for colour in (BLUE, RED)]
    path = _save(frames[0], tmp_path / "frames.gif", save_all=True, append_images=frames[1:],
                 duration=100)
    assert set(_pixels(open_image(path).image)) == {BLUE}


@pytest.mark.parametrize("values, expected", [
    ([0.0, 0.5, 1.0], [0, 128, 255]),  # in [0, 1]: scaled by 255
    ([-5.0, 100.4, 300.0], [0, 100, 255]),  # outside: clipped to [0, 255]
    ([-0.25, 0.75, 0.0], [0, 1, 0]),  # negative, so not in [0, 1]: clipped, not scaled
])
def test_float_tiff_follows_the_documented_rule(tmp_path: Path, values, expected):
    image = Image.fromarray(np.array([values], dtype=np.float32))
    assert image.mode == "F"
    decoded = open_image(_save(image, tmp_path / "float.tif"))
    assert (decoded.format, decoded.mode) == ("TIFF", "F")
    assert _pixels(decoded.image) == [(v, v, v) for v in expected]


def test_a_damaged_header_is_named_by_its_signature(tmp_path):
    path = tmp_path / "header.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)  # PNG magic, no valid IHDR chunk
    with pytest.raises(ImageError, match="^corrupt PNG header$"):
        open_image(path)
    other = tmp_path / "words.png"
    other.write_bytes(b"plain text, not an image at all")
    with pytest.raises(ImageError, match="not a supported image"):
        open_image(other)
