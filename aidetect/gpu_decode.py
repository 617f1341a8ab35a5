"""JPEGs decoded on the scan's device (nvJPEG through torchvision on CUDA), in batches.

A decoding worker reads a file's bytes and its header with Pillow (cheap: no pixel is
decoded) and sends it to the device only when the device decodes it exactly as the CPU path
would read it: a baseline or progressive JPEG (not MPO) in RGB or gray, within --max-pixels,
whose data ends with the end-of-image marker (a truncated file never reaches the device, which
might fill the missing rows silently), with a readable EXIF orientation (applied on the device
as `ImageOps.exif_transpose` applies it). Anything else (other formats, CMYK, damaged headers)
goes through the CPU path (`aidetect.data.open_image`), which decides the file's fate and its
error message; so does any file the device decoder refuses, alone, never its batch.

Pixels: torchvision's CPU `decode_jpeg` and Pillow both use libjpeg-turbo and give identical
pixels (measured: 0 levels of difference; the tests bound it at 1). nvJPEG's IDCT and chroma
upsampling differ from libjpeg-turbo's by a few levels on some pixels; the score difference
this makes is what `benchmarks/scan.py --device cuda` prints against the CPU fp32 path.

Streams. torchvision allocates the decoded images on the caller's current stream but decodes
on a private stream that never waits for the caller's, and nvJPEG's hardware engine (A100,
H100) does not wait for queued work on its own stream either. The caching allocator hands out
a block as soon as it is freed on its stream, so on the scan's stream a new image could land
on the activations of a batch the model has queued and not yet read (pytorch/vision#9606:
wrong numbers, silently). So the decoder runs with a stream of its own current, whose blocks
only ever hold decoded images, and each image is handed to the scan's stream
(`record_stream`): its block is not reused until the work queued on it has run.
"""

from __future__ import annotations

import io
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps

from aidetect.data import ALLOWED_FORMATS, to_rgb

ORIENTATION = 0x0112  # the EXIF tag
DEVICE_MODES = frozenset({"RGB", "L"})  # JPEG colour modes read the same way on every decoder
_END_OF_IMAGE = b"\xff\xd9"


@dataclass
class JpegFile:
    """A JPEG for the device: its bytes, and what its header said."""

    data: torch.Tensor | None  # the file's bytes, uint8 (None while packed in its batch)
    orientation: int  # EXIF orientation, 1 (as stored) to 8
    mode: str  # "RGB" or "L"
    width: int  # as displayed (orientation applied)
    height: int


def read_jpeg(path: str | Path, *, max_pixels: int | None,
              thumbnail_side: int | None = None) -> tuple[JpegFile, Image.Image | None] | None:
    """`path` as a JpegFile for the device, or None where the CPU path must read it.

    Never raises: any doubt (unreadable, not a plain JPEG, over the pixel limit) returns None,
    and the CPU path gives the file its result. With `thumbnail_side`, also a small RGB copy
    (decoded at a reduced DCT scale, orientation applied) for the HTML report.
    """
    try:
        data = Path(path).read_bytes()
        if not data.rstrip(b"\x00\r\n ").endswith(_END_OF_IMAGE):
            return None  # truncated (or trailing data): the CPU path decides
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            if image.format != "JPEG" or image.mode not in DEVICE_MODES:
                return None
            if max_pixels and image.width * image.height > max_pixels:
                return None  # the CPU path words the refusal
            orientation = int(image.getexif().get(ORIENTATION, 1))
            if orientation not in range(1, 9):
                orientation = 1  # exif_transpose ignores values outside 1..8
            small = _thumbnail_image(image, thumbnail_side) if thumbnail_side else None
    except Exception:  # noqa: BLE001 - whatever Pillow raises, the CPU path reports it
        return None
    width, height = image.size
    if orientation >= 5:  # transposed or rotated by a quarter turn
        width, height = height, width
    jpeg = JpegFile(torch.frombuffer(bytearray(data), dtype=torch.uint8), orientation,
                    image.mode, width, height)
    return jpeg, small


def _thumbnail_image(image: Image.Image, side: int) -> Image.Image:
    image.draft("RGB", (side, side))  # decode at 1/2, 1/4 or 1/8 scale, still >= side
    return to_rgb(ImageOps.exif_transpose(image))


def decode_jpegs(files: list[JpegFile], device: torch.device) -> list[torch.Tensor | None]:
    """Decode on `device` in one batch: (3, H, W) uint8 per file, orientation applied; None for
    a file the decoder refuses (the others still decode). On CUDA the images are ready for the
    current stream's work (see "Streams" above)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not files:
        return []
    stream = _decoding_stream(device)
    with warnings.catch_warnings(), (torch.cuda.stream(stream) if stream else nullcontext()):
        # torchvision 0.29 announces that TorchCodec will take over image decoding.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            images = decode_jpeg([f.data for f in files], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            images = [_decode_one(f, device) for f in files]  # find the file(s) refused
    if stream is not None:
        _hand_over(images, stream, torch.cuda.current_stream(device))
    return [_checked(image, f) for image, f in zip(images, files, strict=True)]


_DECODING_STREAMS: dict[int, torch.cuda.Stream] = {}  # per CUDA device index


def _decoding_stream(device: torch.device) -> torch.cuda.Stream | None:
    """The stream the decoder's images are allocated on (CUDA only), one per device."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _DECODING_STREAMS:
        _DECODING_STREAMS[index] = torch.cuda.Stream(device=index)
    return _DECODING_STREAMS[index]


def _hand_over(images: list[torch.Tensor | None], producer: torch.cuda.Stream,
               consumer: torch.cuda.Stream) -> None:
    """`consumer`'s next work waits for the decode, and no image's memory goes back to the
    decoder before the work `consumer` has queued on it has run."""
    consumer.wait_stream(producer)
    for image in images:
        if image is not None:
            image.record_stream(consumer)


def _decode_one(file: JpegFile, device: torch.device) -> torch.Tensor | None:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(file.data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def _checked(image: torch.Tensor | None, file: JpegFile) -> torch.Tensor | None:
    if image is None:
        return None
    image = orient(image, file.orientation)
    if tuple(image.shape) != (3, file.height, file.width):
        return None  # not the picture the header describes: let the CPU path read it
    return image


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) as stored -> as displayed, for EXIF orientation 1..8 (`exif_transpose`)."""
    if orientation == 2:  # mirrored
        return image.flip(-1)
    if orientation == 3:  # upside down
        return image.flip(-2, -1)
    if orientation == 4:  # mirrored upside down
        return image.flip(-2)
    if orientation == 5:  # transposed
        return image.transpose(-2, -1)
    if orientation == 6:  # a quarter turn clockwise to display
        return image.transpose(-2, -1).flip(-1)
    if orientation == 7:  # transversed
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:  # a quarter turn anticlockwise to display
        return image.transpose(-2, -1).flip(-2)
    return image
