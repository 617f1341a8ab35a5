"""Scanning: files in, one `ImageResult` per file out, in the order the files were given.

Two pipelines (`Scanner.scan`), both with one per-file step (`read_file`) in DataLoader worker
processes that overlap the model:
- CPU (the default off CUDA): the worker decodes (`aidetect.data.open_image`) and preprocesses.
- device (the default on CUDA): the worker reads a JPEG's bytes and header only; the batch's
  JPEGs are decoded on the device (`aidetect.gpu_decode`), other formats in the worker, and the
  whole batch is preprocessed on the device at once (`preprocess.preprocess_batch`). Logits
  come back through pinned memory, read once the next batch is queued.

The model runs in eval mode under `torch.inference_mode`, with LoRA merged. A file that cannot be
scored becomes a result with an `error`; nothing about one file stops the others.

Precision (`aidetect.precision`): the tower's weights are converted to the precision chosen for
the device (bf16 on CPUs with bf16 units and on CUDA from Ampere on, fp16 on older GPUs and on
MPS, fp32 elsewhere), the head and the sigmoid stay fp32. `benchmarks/scan.py` prints the
largest score difference from fp32; `precision="fp32"` keeps everything fp32.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch

from aidetect.config import PreprocessConfig
from aidetect.data import DEFAULT_MAX_PIXELS, Candidate, open_image
from aidetect.devices import default_device_workers, default_threads, default_workers
from aidetect.errors import ImageError, UsageError
from aidetect.gpu_decode import JpegFile, decode_jpegs, read_jpeg
from aidetect.precision import choose_precision, cpu_features, prepare_for_inference
from aidetect.preprocess import check_image_size, preprocess_batch, preprocess_tensor, to_tensor
from aidetect.provenance import ProvenanceSettings, read_provenance
from aidetect.results import LABEL_AI, LABEL_REAL, ImageResult

CPU_MICRO_BATCH = 4  # images per forward pass on the CPU, whatever --batch-size (`_forward`)
THUMBNAIL_SIDE = 256  # px, the longer side of an HTML report's thumbnails


@dataclass
class _Decoded:
    """What a worker sends back for one file: the model's input, in one of three forms."""

    index: int
    tensor: torch.Tensor | None  # preprocessed (CPU pipeline)
    result: ImageResult  # path and file facts filled; score fields left to the model
    pixels: torch.Tensor | None = None  # decoded (3, H, W) uint8, to preprocess on the device
    jpeg: JpegFile | None = None  # to decode on the device
    has_pixels: bool = False  # pixels packed into the batch (`_collate`)


# How a file becomes the model's input: "cpu" decodes and preprocesses in the worker; "device"
# leaves JPEGs to the device's decoder and all preprocessing to the device (other formats are
# decoded in the worker); "device-fallback" is "device" for a JPEG the device refused.
Pipeline = Literal["cpu", "device", "device-fallback"]


def read_file(candidate: Candidate, config: PreprocessConfig, *, pipeline: Pipeline,
              max_pixels: int | None, thumbnails: bool, index: int = 0,
              provenance: ProvenanceSettings | None = None) -> _Decoded:
    """One file -> its result's file facts (format, mode, size, thumbnail) and the model's input.

    The one per-file step of every pipeline, run in the decoding workers (and in the main
    process for a file the device refused). Never raises on a bad file: the result's `error`
    says what is wrong. With `provenance` settings, the result also carries what the file
    declares (`aidetect.provenance`; a bad file gets `provenance.error`, never an exception).
    """
    result = ImageResult(path=candidate.path, error=candidate.error)
    if candidate.error is not None:
        return _Decoded(index, None, result)
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
                    result.thumbnail = _thumbnail(small)
                return _Decoded(index, None, result, jpeg=jpeg)
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
            result.thumbnail = _thumbnail(decoded.image)
    except ImageError as error:
        result.error = error.message
        return _Decoded(index, None, result)
    except MemoryError:
        result.error = "out of memory while decoding (try a lower --max-pixels)"
        return _Decoded(index, None, result)
    if tensor is not None:
        return _Decoded(index, tensor, result)
    return _Decoded(index, None, result, pixels=pixels)


class _FileDataset(torch.utils.data.Dataset):
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

    def __getitem__(self, index: int) -> _Decoded:
        return read_file(self.candidates[index], self.preprocess, pipeline=self.pipeline,
                         max_pixels=self.max_pixels, thumbnails=self.thumbnails, index=index,
                         provenance=self.provenance)


def _thumbnail(image) -> bytes:
    small = image.copy()
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


@dataclass
class _Batch:
    items: list[_Decoded]
    images: torch.Tensor | None  # (n, 3, S, S) for the items that decoded, in order (CPU)
    # The device pipeline's inputs (JPEG bytes, decoded pixels), each kind in one flat tensor
    # while the batch travels from the worker: one shared-memory segment (and file descriptor)
    # per kind instead of one per file, and one pinned copy.
    packed: dict[str, tuple[torch.Tensor, list[tuple[int, ...]]]] = field(default_factory=dict)

    def pin_memory(self) -> _Batch:
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


def _collate(items: list[_Decoded]) -> _Batch:
    tensors = [item.tensor for item in items if item.tensor is not None]
    for item in items:
        item.tensor = None  # stacked below; don't send it twice
    batch = _Batch(items, torch.stack(tensors) if tensors else None)
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


class Scanner:
    """A detector made ready for inference on one device.

    Args:
        detector: an `aidetect.Detector` (LoRA is merged here if it has any).
        device: where the model runs.
        threshold: scores strictly above it are judged AI-generated.
        precision: "auto" (the fastest that keeps scores within 1e-2 of fp32 on this device;
            `aidetect.precision.choose_precision`), "fp32", "bf16", "fp16" or "int8".
        threads: CPU threads for the model (None, on the CPU: `devices.default_threads()`,
            the physical cores the default decoding processes leave; elsewhere torch's own).
    """

    def __init__(self, detector, *, device: torch.device, threshold: float,
                 precision: str = "auto", threads: int | None = None) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise UsageError(f"--threshold {threshold}: must be between 0 and 1")
        self.precision = choose_precision(device, precision)
        if threads is not None and threads < 1:
            raise UsageError(f"--threads {threads}: must be at least 1")
        if threads is None and device.type == "cpu":
            threads = default_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        if device.type == "cuda" and device.index is not None:
            # The current device: torchvision's nvJPEG makes the current device's stream wait
            # for the decode, and under torchrun each process keeps off the others' GPUs.
            torch.cuda.set_device(device)
        if detector.has_lora:
            detector.merge_lora()
        detector = detector.to(device).eval().requires_grad_(False)
        self.detector = prepare_for_inference(detector, self.precision)
        self.device = device
        self.threshold = float(threshold)
        self.timings = ScanTimings()  # of the last scan

    @property
    def description(self) -> str:
        """The device as reports show it, e.g. "cpu (2 threads, bf16: AMX-BF16, AVX512-BF16)"."""
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            index = self.device.index if self.device.index is not None else 0
            return f"cuda:{index} ({name}, {self.precision})"
        if self.device.type == "mps":
            return f"mps (Apple GPU, {self.precision})"
        threads = torch.get_num_threads()
        return (f"cpu ({threads} thread{'s' if threads != 1 else ''}, {self.precision}; "
                f"{cpu_features().describe()})")

    def scan(self, candidates: Sequence[Candidate], *, batch_size: int = 32,
             workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
             thumbnails: bool = False, device_decode: bool | None = None,
             provenance: ProvenanceSettings | None = None) -> Iterator[ImageResult]:
        """Score `candidates`, yielding one result per candidate in their order.

        Args:
            provenance: read what each file declares (`aidetect.provenance`) with these
                settings; None: not read.
            device_decode: the device pipeline (JPEGs decoded on the device, preprocessing
                batched there); default: on CUDA. It runs on the CPU too (tests use it).

        After the scan, `self.timings` says where the time went (`ScanTimings`).
        """
        if batch_size < 1:
            raise UsageError(f"--batch-size {batch_size}: must be at least 1")
        device_decode = self.device.type == "cuda" if device_decode is None else device_decode
        if workers is None:
            workers = (default_device_workers() if self.device.type == "cuda"
                       else default_workers(self.device))
        if workers < 0:
            raise UsageError(f"--workers {workers}: must be 0 or more")
        self.timings = ScanTimings()
        if not candidates:
            return
        dataset = _FileDataset(candidates, self.detector.preprocess_config,
                               max_pixels=max_pixels, thumbnails=thumbnails,
                               pipeline="device" if device_decode else "cpu",
                               provenance=provenance)
        workers = min(workers, -(-len(dataset) // batch_size))  # no idle processes
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=_batches(len(dataset), batch_size),
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None,  # a few batches ahead of the model
        )
        clock = _StageClock(self.device)
        pending: tuple[_Batch, _HostLogits | None] | None = None
        batches, first = iter(loader), True
        while True:
            with clock.stage("waiting"):
                batch = next(batches, None)
            if batch is None:
                break
            images = self._device_inputs(batch, dataset, clock) if device_decode else (
                None if batch.images is None else batch.images.to(self.device, non_blocking=True))
            with clock.stage("model"):
                logits = self._forward(images) if images is not None else None
            host = _HostLogits(logits) if logits is not None else None
            # The previous batch's results are read once this one is queued, so the device
            # never waits for the copy back; the first batch (one image) is read at once.
            if pending is not None:
                yield from self._results(*pending)
            pending = (batch, host)
            if first:
                yield from self._results(*pending)
                pending, first = None, False
        if pending is not None:
            yield from self._results(*pending)
        self.timings = clock.totals(self.timings.images)

    def _device_inputs(self, batch: _Batch, dataset: _FileDataset,
                       clock: _StageClock) -> torch.Tensor | None:
        """The device pipeline: decode the batch's JPEGs on the device (a file it refuses
        through the CPU path, alone), then preprocess every image of the batch at once."""
        try:
            return self._decode_and_preprocess(batch, dataset, clock)
        except torch.OutOfMemoryError:
            raise UsageError(
                f"out of {self.device.type.upper()} memory decoding a batch of "
                f"{len(batch.items)} images: pass a smaller --batch-size or --max-pixels"
            ) from None

    def _decode_and_preprocess(self, batch: _Batch, dataset: _FileDataset,
                               clock: _StageClock) -> torch.Tensor | None:
        batch.unpack()
        jpeg_items = [item for item in batch.items if item.jpeg is not None]
        with clock.stage("decode"):
            decoded = decode_jpegs([item.jpeg for item in jpeg_items], self.device)
            for item, image in zip(jpeg_items, decoded, strict=True):
                item.jpeg = None
                if image is None:  # refused by the device's decoder
                    redo = read_file(dataset.candidates[item.index], dataset.preprocess,
                                     pipeline="device-fallback", max_pixels=dataset.max_pixels,
                                     thumbnails=dataset.thumbnails, index=item.index)
                    redo.result.provenance = item.result.provenance  # read once, in the worker
                    item.result, image = redo.result, redo.pixels
                item.pixels = image
            images = [item.pixels.to(self.device, non_blocking=True) for item in batch.items
                      if item.pixels is not None]
            for item in batch.items:
                item.pixels = None
        if not images:
            return None
        with clock.stage("preprocess"):
            return preprocess_batch(images, dataset.preprocess)

    def _results(self, batch: _Batch, host: _HostLogits | None) -> Iterator[ImageResult]:
        scored = iter(host.values() if host is not None else [])
        self.timings.images += len(batch.items)
        for item in batch.items:
            if item.result.error is None:
                self._fill(item.result, next(scored))
            yield item.result

    def score_tensors(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed images -> (B,) logits, as `scan` computes them."""
        return self._forward(images.to(self.device, non_blocking=True)).cpu()

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (fp32, on the device; not waited for) of preprocessed images on the device.

        On the CPU the model always sees CPU_MICRO_BATCH images at a time (the last group
        padded with copies of its last image): oneDNN picks its bf16 kernels by matrix shape,
        so a ViT-B-16's logits moved by up to 1.3e-2 between batches of 1, 3 and 8; with one
        shape they are bit-identical whatever --batch-size, at no measurable cost. (int8 still
        scales activations per group, so its scores keep depending on their neighbours.)
        """
        try:
            with torch.inference_mode():
                if self.device.type != "cpu":
                    return self.detector(images).float()
                return forward_on_cpu(self.detector, images)
        except torch.OutOfMemoryError:
            raise UsageError(
                f"out of {self.device.type.upper()} memory at batch size {images.shape[0]}: "
                "pass a smaller --batch-size"
            ) from None

    def _fill(self, result: ImageResult, logit: float) -> None:
        if not math.isfinite(logit):
            result.error = f"the model gave a non-finite score ({logit}); try --precision fp32"
            return
        score = float(torch.sigmoid(torch.tensor(logit, dtype=torch.float64)))
        result.logit = logit
        result.score = score
        result.label = LABEL_AI if score > self.threshold else LABEL_REAL


class _HostLogits:
    """A batch's logits copied to the host without waiting: into pinned memory, behind an
    event on CUDA (read when the next batch is queued); a plain copy elsewhere."""

    def __init__(self, logits: torch.Tensor) -> None:
        if logits.device.type == "cuda":
            self.host = torch.empty(logits.shape, dtype=logits.dtype, pin_memory=True)
            self.host.copy_(logits, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()
        else:
            self.host, self.ready = logits.cpu(), None

    def values(self) -> list[float]:
        if self.ready is not None:
            self.ready.synchronize()
        return self.host.tolist()


@dataclass
class ScanTimings:
    """Where a scan's time went, in seconds: waiting for the decoding workers (host time);
    decoding on the device, preprocessing on the device, and the model (device time, measured
    with CUDA events on CUDA, so measuring never stalls the device)."""

    images: int = 0
    waiting: float = 0.0
    decode: float = 0.0
    preprocess: float = 0.0
    model: float = 0.0


class _StageClock:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, float] = {}
        self.events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.cuda and name != "waiting":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.events.append((name, start, end))
            return
        began = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began

    def totals(self, images: int) -> ScanTimings:
        for name, start, end in self.events:
            end.synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + start.elapsed_time(end) / 1000
        return ScanTimings(images=images, **self.seconds)


def _batches(count: int, batch_size: int) -> list[list[int]]:
    """Consecutive batches, the first of one image: the first result (and the progress bar)
    comes after one image's work instead of a whole batch's. Scores do not depend on it."""
    order = list(range(count))
    return [order[:1]] + [order[i : i + batch_size] for i in range(1, count, batch_size)]


def forward_on_cpu(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """`model(images)` in fp32, the model always given CPU_MICRO_BATCH images (see
    `Scanner._forward`): what `scan` and `eval` run on the CPU."""
    return torch.cat([model(group)[:count].float()
                      for group, count in _micro_batches(images, CPU_MICRO_BATCH)])


def _micro_batches(images: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, int]]:
    """(group of exactly `size` images, how many of them are real) over `images` in order; the
    last group is padded with copies of its last image."""
    for start in range(0, images.shape[0], size):
        group = images[start : start + size]
        count = group.shape[0]
        if count < size:
            group = torch.cat([group, group[-1:].expand(size - count, *group.shape[1:])])
        yield group, count
