"""Scanning: files in, one `ImageResult` per file out, in the order the files were given.

Decoding and preprocessing run in DataLoader worker processes, so they overlap the model; the
model runs in eval mode under `torch.inference_mode`, with LoRA merged. A file that cannot be
scored becomes a result with an `error`; nothing about one file stops the others.

Precision (`aidetect.precision`): the tower's weights are converted to the precision chosen for
the device (bf16 on CPUs with bf16 units and on CUDA from Ampere on, fp16 on older GPUs and on
MPS, fp32 elsewhere), the head and the sigmoid stay fp32. `benchmarks/scan.py` prints the
largest score difference from fp32; `precision="fp32"` keeps everything fp32.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from aidetect.config import PreprocessConfig
from aidetect.data import DEFAULT_MAX_PIXELS, Candidate, open_image
from aidetect.devices import default_threads, default_workers
from aidetect.errors import ImageError, UsageError
from aidetect.precision import choose_precision, cpu_features, prepare_for_inference
from aidetect.preprocess import preprocess_tensor, to_tensor
from aidetect.results import LABEL_AI, LABEL_REAL, ImageResult

THUMBNAIL_SIDE = 256  # px, the longer side of an HTML report's thumbnails


@dataclass
class _Decoded:
    """What a worker sends back for one file."""

    index: int
    tensor: torch.Tensor | None
    result: ImageResult  # path and file facts filled; score fields left to the model


class _FileDataset(torch.utils.data.Dataset):
    """Candidates -> preprocessed tensors. Never raises on a bad file: it reports it."""

    def __init__(self, candidates: Sequence[Candidate], preprocess: PreprocessConfig, *,
                 max_pixels: int | None, thumbnails: bool) -> None:
        self.candidates = list(candidates)
        self.preprocess = preprocess
        self.max_pixels = max_pixels
        self.thumbnails = thumbnails

    def __len__(self) -> int:
        return len(self.candidates)

    def __getitem__(self, index: int) -> _Decoded:
        candidate = self.candidates[index]
        result = ImageResult(path=candidate.path, error=candidate.error)
        if candidate.error is not None:
            return _Decoded(index, None, result)
        try:
            decoded = open_image(candidate.path, max_pixels=self.max_pixels)
            result.format, result.mode = decoded.format, decoded.mode
            result.width, result.height = decoded.width, decoded.height
            tensor = preprocess_tensor(to_tensor(decoded.image), self.preprocess)
            if self.thumbnails:
                result.thumbnail = _thumbnail(decoded.image)
        except ImageError as error:
            result.error = error.message
            return _Decoded(index, None, result)
        except MemoryError:
            result.error = "out of memory while decoding (try a lower --max-pixels)"
            return _Decoded(index, None, result)
        return _Decoded(index, tensor, result)


def _thumbnail(image) -> bytes:
    small = image.copy()
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


@dataclass
class _Batch:
    items: list[_Decoded]
    images: torch.Tensor | None  # (n, 3, S, S) for the items that decoded, in order

    def pin_memory(self) -> _Batch:
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def _collate(items: list[_Decoded]) -> _Batch:
    tensors = [item.tensor for item in items if item.tensor is not None]
    for item in items:
        item.tensor = None  # stacked below; don't send it twice
    return _Batch(items, torch.stack(tensors) if tensors else None)


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
        if detector.has_lora:
            detector.merge_lora()
        detector = detector.to(device).eval().requires_grad_(False)
        self.detector = prepare_for_inference(detector, self.precision)
        self.device = device
        self.threshold = float(threshold)

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
             thumbnails: bool = False) -> Iterator[ImageResult]:
        """Score `candidates`, yielding one result per candidate in their order."""
        if batch_size < 1:
            raise UsageError(f"--batch-size {batch_size}: must be at least 1")
        workers = default_workers(self.device) if workers is None else workers
        if workers < 0:
            raise UsageError(f"--workers {workers}: must be 0 or more")
        if not candidates:
            return
        dataset = _FileDataset(candidates, self.detector.preprocess_config,
                               max_pixels=max_pixels, thumbnails=thumbnails)
        workers = min(workers, -(-len(dataset) // batch_size))  # no idle processes
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=_batches(len(dataset), batch_size),
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None,  # a few batches ahead of the model
        )
        for batch in loader:
            logits = self._logits(batch.images) if batch.images is not None else []
            scored = iter(logits)
            for item in batch.items:
                if item.result.error is None:
                    self._fill(item.result, next(scored))
                yield item.result

    def score_tensors(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed images -> (B,) logits, as `scan` computes them."""
        return torch.tensor(self._logits(images))

    def _logits(self, images: torch.Tensor) -> list[float]:
        images = images.to(self.device, non_blocking=True)
        try:
            with torch.inference_mode():
                logits = self.detector(images)
        except torch.OutOfMemoryError:
            raise UsageError(
                f"out of {self.device.type.upper()} memory at batch size {images.shape[0]}: "
                "pass a smaller --batch-size"
            ) from None
        return logits.float().cpu().tolist()

    def _fill(self, result: ImageResult, logit: float) -> None:
        if not math.isfinite(logit):
            result.error = f"the model gave a non-finite score ({logit}); try --precision fp32"
            return
        score = float(torch.sigmoid(torch.tensor(logit, dtype=torch.float64)))
        result.logit = logit
        result.score = score
        result.label = LABEL_AI if score > self.threshold else LABEL_REAL


def _batches(count: int, batch_size: int) -> list[list[int]]:
    """Consecutive batches, the first of one image: the first result (and the progress bar)
    comes after one image's work instead of a whole batch's. Scores do not depend on it."""
    order = list(range(count))
    return [order[:1]] + [order[i : i + batch_size] for i in range(1, count, batch_size)]
