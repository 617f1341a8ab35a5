"""Finding the images under the paths a user gives, and decoding each one safely to RGB.

Decoding is by content, not extension, through an allow-list of Pillow formats. Every way a
file can fail (empty, truncated, not an image, a format outside the list, a decompression bomb,
corrupt data) becomes an `ImageError` with a one-line reason, so a scan records it and goes on.

How each image mode becomes 8-bit RGB (the detector's input):
- RGB: as is. L (gray) and 1 (bilevel): the gray value in all three channels.
- Alpha (RGBA, LA, PA, RGBa, La) and palette images with transparency (via RGBA): composited
  over a white background, the colour most viewers show behind a transparent image.
- 16-bit gray (I;16, I;16B, I;16L, and I holding 16-bit data): scaled to 8 bits, 0..65535 ->
  0..255 (divided by 257, rounded), never clipped. 32-bit float (F): values in [0, 1] scaled by
  255, otherwise clipped to [0, 255].
- CMYK, YCbCr, LAB, HSV: Pillow's conversion to RGB.
- Animations (GIF, WebP, multi-page TIFF): the first frame.
- EXIF orientation is applied, so width and height are the image as it is displayed.
"""

from __future__ import annotations

import errno
import fnmatch
import io
import os
import stat
import struct
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from aidetect.config import DEFAULT_MAX_PIXELS
from aidetect.errors import ImageError

# The formats a scan decodes; anything else is refused by content, whatever its extension.
# (Multi-picture JPEGs from phones, MPO, open through the JPEG plugin.)
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "DIB", "GIF", "TIFF")
# Extensions looked for when walking a folder (files named explicitly are tried whatever
# their name).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)
BACKGROUND = (255, 255, 255)  # behind transparent pixels

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half-decoded


@dataclass(frozen=True)
class DecodedImage:
    """An image as the detector sees it (8-bit RGB), with what the file said about itself."""

    image: Image.Image  # RGB
    format: str  # Pillow's format name, from the content: "JPEG", "PNG", ...
    mode: str  # the file's mode before conversion: "RGB", "P", "I;16", "CMYK", ...
    width: int  # as displayed (EXIF orientation applied)
    height: int


def open_image(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode `path` to RGB, or raise `ImageError` with a one-line reason.

    Args:
        path: the file.
        max_pixels: refuse images with more pixels than this (decompression bombs); None or 0
            for no limit.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ImageError(_os_reason(error)) from None
    if size == 0:
        raise ImageError("empty file")
    limit = max_pixels or None
    saved_limit = Image.MAX_IMAGE_PIXELS
    # Pillow only warns between its limit and twice it; `_decode` refuses instead, from the
    # header's size, before any pixel data is decoded.
    Image.MAX_IMAGE_PIXELS = None
    try:
        handle = open(path, "rb")  # closed in `finally`
    except OSError as error:
        Image.MAX_IMAGE_PIXELS = saved_limit
        raise ImageError(_os_reason(error)) from None
    try:
        with warnings.catch_warnings():
            # Pillow warns on damaged metadata ("Corrupt EXIF data", TIFF tags) while opening,
            # loading and reading EXIF; the pixels still decide, and the engine never prints.
            warnings.simplefilter("ignore")
            # From an open file, not a path: Pillow then never memory-maps an uncompressed
            # image, and its memory-mapped path lays out an L, I;16 or RGBA TIFF with an EXIF
            # rotation (orientation 5-8) at the rotated size, scrambling the pixels.
            with Image.open(handle, formats=ALLOWED_FORMATS) as image:
                return _decode(image, limit)
    except UnidentifiedImageError:
        claimed = _signature_format(path)
        if claimed is not None:  # the right magic bytes, but Pillow could not read the header
            raise ImageError(f"corrupt {claimed} header") from None
        raise ImageError(
            "not a supported image (the content is not JPEG, PNG, WebP, BMP, GIF or TIFF)"
        ) from None
    except OSError as error:
        raise ImageError(_decode_reason(error)) from None
    except (ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, MemoryError,
            struct.error) as error:
        # What Pillow's plugins raise on malformed headers and chunks.
        raise ImageError(f"corrupt image data ({_short(error)})") from None
    finally:
        handle.close()
        Image.MAX_IMAGE_PIXELS = saved_limit


def pixel_limit_error(width: int, height: int, limit: int | None) -> str | None:
    """Why an image of this size is refused under --max-pixels `limit`, or None."""
    pixels = width * height
    if not limit or pixels <= limit:
        return None
    return (f"{width}x{height} = {pixels:,} pixels, over the limit of {limit:,} "
            "(a possible decompression bomb; raise it with --max-pixels)")


THUMBNAIL_SIDE = 256  # px, the longer side of an HTML report's thumbnails


def jpeg_thumbnail(image: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """A JPEG of `image` whose longer side is at most `side` px (the HTML report's)."""
    small = image.copy()
    small.thumbnail((side, side))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def _decode(image: Image.Image, limit: int | None) -> DecodedImage:
    refused = pixel_limit_error(image.width, image.height, limit)
    if refused is not None:
        raise ImageError(refused)
    file_format = image.format or "unknown"
    file_mode = image.mode
    image.load()  # the first frame; raises on truncated or corrupt data
    try:
        oriented = ImageOps.exif_transpose(image)
    except (OSError, ValueError, TypeError, KeyError, SyntaxError):
        oriented = image  # a broken EXIF block: keep the pixels as stored
    rgb = to_rgb(oriented)
    return DecodedImage(rgb, file_format, file_mode, rgb.width, rgb.height)


# The first bytes of each allowed format, to tell a damaged header from another kind of file.
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
               (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"))


def _signature_format(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, as the module docstring defines."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.int64)
        scaled = (np.clip(values, 0, 65535) * 255 + 32767) // 65535
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _os_reason(error: OSError) -> str:
    if error.errno is not None and error.strerror:
        if error.errno == errno.ELOOP:  # 40 on Linux, 62 on macOS
            return "symbolic link loop"
        return error.strerror.lower() if error.strerror[0].isupper() else error.strerror
    return _short(error)


def _decode_reason(error: OSError) -> str:
    text = _short(error)
    if "truncated" in text.lower():
        return f"truncated file ({text})"
    if error.errno is not None:
        return _os_reason(error)
    return f"corrupt image data ({text})"


# --- finding images ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A file to scan, or a path that could not be listed (then `error` says why)."""

    path: str
    error: str | None = None


def find_images(
    paths: Sequence[str | Path],
    *,
    exclude: Iterable[str] = (),
    follow_symlinks: bool = False,
) -> list[Candidate]:
    """The image files under `paths`, each real file once, sorted by path.

    Files named in `paths` are taken whatever their extension (decoding decides); folders are
    walked recursively for `IMAGE_EXTENSIONS` (case-insensitive). Symlinks to files are
    followed; symlinked folders are entered only with `follow_symlinks`, and never twice (no
    loops). A file reached twice (the same device and inode) is kept once, under the first
    path in sorted order. `exclude` globs are matched against each name and each full path;
    an excluded folder is not entered. Paths that do not exist raise `UsageError` (nothing
    scanned); folders that cannot be read and broken links become candidates with an error.
    """
    from aidetect.errors import UsageError

    patterns = tuple(exclude)
    missing = [str(p) for p in paths if not os.path.lexists(p)]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3
                                          else "")
        raise UsageError(f"no such file or folder: {shown}")
    found: list[tuple[str, tuple[int, int] | None, str | None]] = []
    visited_dirs: set[tuple[int, int]] = set()
    # Sorted, so that a folder reached through two given paths (a symlink and its target) is
    # listed under the same one whatever the order of the arguments.
    for given in sorted(os.fspath(p) for p in paths):
        if _excluded(given, patterns):
            continue
        try:
            info = os.stat(given)
        except OSError as error:
            found.append((given, None, _link_reason(error, os.path.islink(given))))
            continue
        if stat.S_ISDIR(info.st_mode):
            # A folder named explicitly is entered even when it is a symlink.
            _walk(given, info, patterns, follow_symlinks, visited_dirs, found)
        else:
            found.append((given, (info.st_dev, info.st_ino), None))
    found.sort(key=lambda item: item[0])
    seen: set[tuple[int, int]] = set()
    candidates = []
    for path, key, error in found:
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        candidates.append(Candidate(path, error))
    return candidates


def _walk(folder: str, info: os.stat_result, patterns: tuple[str, ...], follow_symlinks: bool,
          visited: set[tuple[int, int]], found: list) -> None:
    key = (info.st_dev, info.st_ino)
    if key in visited:
        return
    visited.add(key)
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as error:
        found.append((folder, None, f"cannot read folder: {_os_reason(error)}"))
        return
    for entry in entries:
        path = os.path.join(folder, entry.name)
        if _excluded(path, patterns, entry.name):
            continue
        is_link = False
        try:
            is_link = entry.is_symlink()
            target = os.stat(path)  # follows links
        except OSError as error:
            if _has_image_extension(entry.name):
                found.append((path, None, _link_reason(error, is_link)))
            continue
        if stat.S_ISDIR(target.st_mode):
            if is_link and not follow_symlinks:
                continue
            _walk(path, target, patterns, follow_symlinks, visited, found)
        elif stat.S_ISREG(target.st_mode) and _has_image_extension(entry.name):
            found.append((path, (target.st_dev, target.st_ino), None))


def _link_reason(error: OSError, is_link: bool) -> str:
    if is_link and error.errno != errno.ELOOP:
        return "broken symbolic link"
    return _os_reason(error)


def _has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _excluded(path: str, patterns: tuple[str, ...], name: str | None = None) -> bool:
    if not patterns:
        return False
    name = name if name is not None else os.path.basename(os.path.normpath(path))
    posix = Path(path).as_posix()
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(posix, p) for p in patterns)
