"""Decoding each image to 8-bit RGB (aidetect.data.open_image): formats by content, modes to
RGB, orientation, animations. Damaged and hostile files: test_data_damaged.py.

Every image is generated here, small, with Pillow and numpy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from decoding_helpers import BLUE, GREEN, RED, WHITE, near, noise, pixels, save_image
from PIL import Image

from aidetect.data import (
    ALLOWED_FORMATS,
    DecodedImage,
    open_image,
    to_rgb,
)
from aidetect.errors import ImageError


# --- decoding: formats, by content --------------------------------------------------------------
@pytest.mark.parametrize("fmt, options", [
    ("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {}),
    ("GIF", {}), ("TIFF", {}),
])
def test_each_allowed_format_decodes_by_content_whatever_the_extension(
        tmp_path: Path, fmt: str, options: dict):
    image = Image.new("RGB", (12, 7), (40, 90, 200))
    path = save_image(image, tmp_path / "picture.dat", fmt, **options)
    decoded = open_image(path)
    assert isinstance(decoded, DecodedImage)
    assert fmt in ALLOWED_FORMATS
    assert decoded.format == fmt
    assert (decoded.width, decoded.height) == (12, 7)
    assert decoded.image.mode == "RGB" and decoded.image.size == (12, 7)
    assert near(decoded.image.getpixel((6, 3)), (40, 90, 200), tolerance=6)


def test_a_png_named_jpg_decodes_as_png(tmp_path: Path):
    path = save_image(Image.new("RGB", (5, 3), GREEN), tmp_path / "fake.jpg", "PNG")
    decoded = open_image(path)
    assert (decoded.format, decoded.mode, decoded.width, decoded.height) == ("PNG", "RGB", 5, 3)
    assert decoded.image.getpixel((0, 0)) == GREEN


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "PCX"])
def test_formats_outside_the_allow_list_are_refused(tmp_path: Path, fmt: str):
    assert fmt not in ALLOWED_FORMATS
    path = save_image(Image.new("RGB", (16, 16), RED), tmp_path / "image.jpg", fmt)
    assert Image.open(path).format == fmt  # Pillow itself could decode it
    with pytest.raises(ImageError, match="not a supported image"):
        open_image(path)


def test_decoded_image_fields(tmp_path: Path):
    path = save_image(Image.new("P", (9, 4)), tmp_path / "p.png")
    decoded = open_image(path)
    assert (decoded.format, decoded.mode, decoded.width, decoded.height) == ("PNG", "P", 9, 4)
    assert decoded.image.mode == "RGB" and decoded.image.size == (9, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.width = 3  # type: ignore[misc]


# --- decoding: modes to RGB ---------------------------------------------------------------------
def test_exif_orientation_is_applied(tmp_path: Path):
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 10, 10))  # the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save_image(stored, tmp_path / "rotated.jpg", quality=95, exif=exif.tobytes())
    decoded = open_image(path)
    assert (decoded.width, decoded.height) == (20, 40)
    assert decoded.image.size == (20, 40)
    assert near(decoded.image.getpixel((15, 4)), RED)  # now the top-right corner
    for corner in [(4, 4), (4, 35), (15, 35)]:
        assert near(decoded.image.getpixel(corner), BLUE), corner
    plain = open_image(save_image(stored, tmp_path / "plain.jpg", quality=95))
    assert (plain.width, plain.height) == (40, 20)
    assert near(plain.image.getpixel((4, 4)), RED)


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
    path = save_image(image, tmp_path / f"p.{fmt.lower()}", fmt, transparency=1)
    decoded = open_image(path)
    assert decoded.mode == "P"
    assert pixels(decoded.image) == [RED, WHITE, BLUE, WHITE]


def test_rgba_alpha_is_composited_on_white(tmp_path: Path):
    image = Image.new("RGBA", (3, 1))
    image.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 100, 0, 128)])
    decoded = open_image(save_image(image, tmp_path / "rgba.png"))
    assert decoded.mode == "RGBA" and decoded.image.mode == "RGB"
    transparent, opaque, half = pixels(decoded.image)
    assert transparent == WHITE
    assert opaque == BLUE
    assert near(half, (127, 177, 127), tolerance=1)


def test_la_alpha_is_composited_on_white(tmp_path: Path):
    image = Image.new("LA", (2, 1))
    image.putdata([(50, 0), (50, 255)])
    decoded = open_image(save_image(image, tmp_path / "la.png"))
    assert decoded.mode == "LA"
    assert pixels(decoded.image) == [WHITE, (50, 50, 50)]


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path: Path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    decoded = open_image(save_image(Image.fromarray(values), tmp_path / "gray16.png"))
    assert decoded.mode == "I;16"
    assert pixels(decoded.image) == [(0, 0, 0), (1, 1, 1), (128, 128, 128), (255, 255, 255)]


def test_other_sixteen_bit_modes_are_scaled():
    big_endian = Image.frombytes("I;16B", (3, 1), bytes([0xFF, 0xFF, 0x01, 0x01, 0x80, 0x00]))
    assert pixels(to_rgb(big_endian)) == [(255,) * 3, (1,) * 3, (128,) * 3]
    wide = Image.fromarray(np.array([[0, 32768, 65535, 70000, -5]], dtype=np.int32))
    assert wide.mode == "I"
    assert pixels(to_rgb(wide)) == [(0,) * 3, (128,) * 3, (255,) * 3, (255,) * 3, (0,) * 3]


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path):
    image = Image.new("CMYK", (16, 8), (255, 0, 0, 0))  # full cyan
    image.paste((0, 0, 0, 0), (8, 0, 16, 8))  # white
    decoded = open_image(save_image(image, tmp_path / "cmyk.jpg", quality=95))
    assert (decoded.format, decoded.mode, decoded.image.mode) == ("JPEG", "CMYK", "RGB")
    assert near(decoded.image.getpixel((2, 4)), (0, 255, 255))
    assert near(decoded.image.getpixel((13, 4)), WHITE)


def test_gray_and_bilevel_are_replicated(tmp_path: Path):
    gray = Image.new("L", (3, 1))
    gray.putdata([0, 77, 200])
    decoded = open_image(save_image(gray, tmp_path / "gray.png"))
    assert decoded.mode == "L"
    assert pixels(decoded.image) == [(0, 0, 0), (77, 77, 77), (200, 200, 200)]
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    decoded = open_image(save_image(bilevel, tmp_path / "bilevel.png"))
    assert decoded.mode == "1"
    assert pixels(decoded.image) == [(0, 0, 0), WHITE]


def test_rgb_passes_through_unchanged():
    image = noise((5, 4))
    assert to_rgb(image) is image


@pytest.mark.parametrize("fmt, options", [
    ("GIF", {"duration": 100, "loop": 0}),
    ("WEBP", {"duration": 100, "lossless": True}),
    ("TIFF", {}),
])
def test_animations_and_multi_page_files_give_the_first_frame(
        tmp_path: Path, fmt: str, options: dict):
    frames = [Image.new("RGB", (8, 6), colour) for colour in (RED, GREEN, BLUE)]
    path = save_image(frames[0], tmp_path / f"frames.{fmt.lower()}", fmt, save_all=True,
                 append_images=frames[1:], **options)
    with Image.open(path) as check:
        assert check.n_frames == 3  # the file really holds three frames
    decoded = open_image(path)
    assert decoded.format == fmt and (decoded.width, decoded.height) == (8, 6)
    assert set(pixels(decoded.image)) == {RED}


def test_animation_whose_first_frame_is_not_red_still_gives_the_first_frame(tmp_path: Path):
    frames = [Image.new("RGB", (8, 6), colour) for colour in (BLUE, RED)]
    path = save_image(frames[0], tmp_path / "frames.gif", save_all=True, append_images=frames[1:],
                 duration=100)
    assert set(pixels(open_image(path).image)) == {BLUE}


@pytest.mark.parametrize("values, expected", [
    ([0.0, 0.5, 1.0], [0, 128, 255]),  # in [0, 1]: scaled by 255
    ([-5.0, 100.4, 300.0], [0, 100, 255]),  # outside: clipped to [0, 255]
    ([-0.25, 0.75, 0.0], [0, 1, 0]),  # negative, so not in [0, 1]: clipped, not scaled
])
def test_float_tiff_follows_the_documented_rule(tmp_path: Path, values, expected):
    image = Image.fromarray(np.array([values], dtype=np.float32))
    assert image.mode == "F"
    decoded = open_image(save_image(image, tmp_path / "float.tif"))
    assert (decoded.format, decoded.mode) == ("TIFF", "F")
    assert pixels(decoded.image) == [(v, v, v) for v in expected]


def test_a_damaged_header_is_named_by_its_signature(tmp_path):
    path = tmp_path / "header.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)  # PNG magic, no valid IHDR chunk
    with pytest.raises(ImageError, match="^corrupt PNG header$"):
        open_image(path)
    other = tmp_path / "words.png"
    other.write_bytes(b"plain text, not an image at all")
    with pytest.raises(ImageError, match="not a supported image"):
        open_image(other)
