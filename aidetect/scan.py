"""Scanning: files in, one `ImageResult` per file out, in the order the files were given.

Two pipelines (`Scanner.scan`), both with one per-file step (`scan_inputs.read_file`) in
DataLoader worker processes that overlap the model:
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
largest score difference from the CPU fp32 path, `benchmarks/scan_precision.py` each CPU
precision's; `precision="fp32"` keeps everything fp32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from aidetect.cpu import cpu_features
from aidetect.data import DEFAULT_MAX_PIXELS, Candidate
from aidetect.devices import default_device_workers, default_threads, default_workers
from aidetect.errors import UsageError
from aidetect.gpu_decode import decode_jpegs
from aidetect.precision import (
    choose_precision,
    cpu_group_size,
    forward_on_cpu,
    prepare_for_inference,
)
from aidetect.preprocess import preprocess_batch
from aidetect.provenance import ProvenanceSettings
from aidetect.results import LABEL_AI, LABEL_REAL, ImageResult
from aidetect.scan_inputs import Batch, FileDataset, batch_order, collate, read_file


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
        if self.device.type == "cpu" and not device_decode:
            # The CPU model runs fixed groups whatever the batch size (`cpu_group_size`):
            # handed one group at a time, it starts after a group's decoding, not a batch's,
            # and results (and the progress bar) come a group at a time. Scores do not change.
            batch_size = cpu_group_size(self.detector)
        dataset = FileDataset(candidates, self.detector.preprocess_config,
                               max_pixels=max_pixels, thumbnails=thumbnails,
                               pipeline="device" if device_decode else "cpu",
                               provenance=provenance)
        workers = min(workers, -(-len(dataset) // batch_size))  # no idle processes
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batch_order(len(dataset), batch_size),
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None,  # a few batches ahead of the model
        )
        clock = _StageClock(self.device)
        pending: tuple[Batch, _HostLogits | None] | None = None
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

    def _device_inputs(self, batch: Batch, dataset: FileDataset,
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

    def _decode_and_preprocess(self, batch: Batch, dataset: FileDataset,
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

    def _results(self, batch: Batch, host: _HostLogits | None) -> Iterator[ImageResult]:
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

        On the CPU the model always sees the same number of images at a time
        (`precision.cpu_group_size`; the last group padded with copies of its last image):
        oneDNN picks its bf16 kernels by matrix shape, so a ViT-B-16's logits moved by up to
        1.3e-2 between batches of 1, 3 and 8; with one shape they are bit-identical whatever
        --batch-size. (int8 still scales activations per group, so its scores keep depending
        on their neighbours.)
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
