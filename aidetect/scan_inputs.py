"""The scan's inputs: each file read in a decoding worker into its result's file facts and the
model's input (`read_file`, the one per-file step of every pipeline), and batched for the
model (`collate`, `batch_order`). Never raises on a bad file: its result says what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from aidetect.config import PreprocessConfig
from aidetect.data import THUMBNAIL_SIDE, Candidate, jpeg_thumbnail, open_image
from aidetect.errors import ImageError
from aidetect.gpu_decode import JpegFile, read_jpeg
from aidetect.preprocess import check_image_size, preprocess_tensor, to_tensor
from aidetect.provenance import ProvenanceSettings, read_provenance
from aidetect.results import ImageResult


@dataclass
class Decoded:
    """What a worker sends back for one file: the model's input, in one of three forms."""

    index: int
    tensor: torch.Tensor | None  # preprocessed (CPU pipeline)
    result: ImageResult  # path and file facts filled; score fields left to the model
    pixels: torch.Tensor | None = None  # decoded (3, H, W) uint8, to preprocess on the device
    jpeg: JpegFile | None = None  # to decode on the device
    has_pixels: bool = False  # pixels packed into the batch (`collate`)


# How a file becomes the model's input: "cpu" decodes and preprocesses in the worker; "device"
# leaves JPEGs to the device's decoder and all preprocessing to the device (other formats are
# decoded in the worker); "device-fallback" is "device" for a JPEG the device refused.
Pipeline = Literal["cpu", "device", "device-fallback"]


def read_file(candidate: Candidate, config: PreprocessConfig, *, pipeline: Pipeline,
              max_pixels: int | None, thumbnails: bool, index: int = 0,
              provenance: ProvenanceSettings | None = None) -> Decoded:
    """One file -> its result's file facts (format, mode, size, thumbnail) and the model's input.

    The one per-file step of every pipeline, run in the decoding workers (and in the main
    process for a file the device refused). Never raises on a bad file: the result's `error`
    says what is wrong. With `provenance` settings, the result also carries what the file
    declares (`aidetect.provenance`; a bad file gets `provenance.error`, never an exception).
    """
    result = ImageResult(path=candidate.path, error=candidate.error)
    if candidate.error is not None:
        return Decoded(index, None, result)
    if provenance is not None:
        result.provenance = read_provenance(candidate.path, provenance)
    try:
        if pipeline == "device":
            read = read_jpeg(candidate.path, max_pixels=max_pixels,
                             thumbnail_side=THUMBNAIL_SIDE if thumbnails else None)
            if read is not None:
                jpeg, small = read
                result.format, result.mode = "JPEG", jpeg.mode
                result.width, result.height = jpeg.width, jpeg.height
                check_image_size(jpeg.width, jpeg.height, config)
                if small is not None:
                    result.thumbnail = jpeg_thumbnail(small)
                return Decoded(index, None, result, jpeg=jpeg)
        decoded = open_image(candidate.path, max_pixels=max_pixels)
        result.format, result.mode = decoded.format, decoded.mode
        result.width, result.height = decoded.width, decoded.height
        pixels = to_tensor(decoded.image)
        if pipeline == "cpu":
            tensor = preprocess_tensor(pixels, config)
        else:
            check_image_size(decoded.width, decoded.height, config)
            tensor = None
        if thumbnails:
            result.thumbnail = jpeg_thumbnail(decoded.image)
    except ImageError as error:
        result.error = error.message
        return Decoded(index, None, result)
    except MemoryError:
        result.error = "out of memory while decoding (try a lower --max-pixels)"
        return Decoded(index, None, result)
    if tensor is not None:
        return Decoded(index, tensor, result)
    return Decoded(index, None, result, pixels=pixels)


class FileDataset(torch.utils.data.Dataset):
    """Candidates -> model inputs (`read_file`). Never raises on a bad file: it reports it."""

    def __init__(self, candidates: Sequence[Candidate], preprocess: PreprocessConfig, *,
                 max_pixels: int | None, thumbnails: bool, pipeline: Pipeline = "cpu",
                 provenance: ProvenanceSettings | None = None) -> None:
        self.candidates = list(candidates)
        self.preprocess = preprocess
        self.max_pixels = max_pixels
        self.thumbnails = thumbnails
        self.pipeline = pipeline
        self.provenance = provenance  # None: not read

    def __len__(self) -> int:
        return len(self.candidates)

    def __getitem__(self, index: int) -> Decoded:
        return read_file(self.candidates[index], self.preprocess, pipeline=self.pipeline,
                         max_pixels=self.max_pixels, thumbnails=self.thumbnails, index=index,
                         provenance=self.provenance)


@dataclass
class Batch:
    items: list[Decoded]
    images: torch.Tensor | None  # (n, 3, S, S) for the items that decoded, in order (CPU)
    # The device pipeline's inputs (JPEG bytes, decoded pixels), each kind in one flat tensor
    # while the batch travels from the worker: one shared-memory segment (and file descriptor)
    # per kind instead of one per file, and one pinned copy.
    packed: dict[str, tuple[torch.Tensor, list[tuple[int, ...]]]] = field(default_factory=dict)

    def pin_memory(self) -> Batch:
        if self.images is not None:
            self.images = self.images.pin_memory()
        self.packed = {kind: (flat.pin_memory(), shapes)
                       for kind, (flat, shapes) in self.packed.items()}
        return self

    def unpack(self) -> None:
        """Give the items back their JPEG bytes and pixels (views of the flat tensors)."""
        if "jpeg" in self.packed:
            jpegs = [item.jpeg for item in self.items if item.jpeg is not None]
            for jpeg, data in zip(jpegs, _unpack(*self.packed.pop("jpeg")), strict=True):
                jpeg.data = data
        if "pixels" in self.packed:
            owners = [item for item in self.items if item.has_pixels]
            for item, pixels in zip(owners, _unpack(*self.packed.pop("pixels")), strict=True):
                item.pixels = pixels


def collate(items: list[Decoded]) -> Batch:
    tensors = [item.tensor for item in items if item.tensor is not None]
    for item in items:
        item.tensor = None  # stacked below; don't send it twice
    batch = Batch(items, torch.stack(tensors) if tensors else None)
    jpegs = [item.jpeg for item in items if item.jpeg is not None]
    if jpegs:
        batch.packed["jpeg"] = _pack([jpeg.data for jpeg in jpegs])
        for jpeg in jpegs:
            jpeg.data = None
    owners = [item for item in items if item.pixels is not None]
    if owners:
        batch.packed["pixels"] = _pack([item.pixels for item in owners])
        for item in owners:
            item.pixels, item.has_pixels = None, True
    return batch


def _pack(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    return torch.cat([t.reshape(-1) for t in tensors]), [tuple(t.shape) for t in tensors]


def _unpack(flat: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    sizes = [math.prod(shape) for shape in shapes]
    return [part.view(shape) for part, shape in zip(flat.split(sizes), shapes, strict=True)]


def batch_order(count: int, batch_size: int) -> list[list[int]]:
    """Consecutive batches, the first of one image: the first result (and the progress bar)
    comes after one image's work instead of a whole batch's. Scores do not depend on it."""
    order = list(range(count))
    return [order[:1]] + [order[i : i + batch_size] for i in range(1, count, batch_size)]
