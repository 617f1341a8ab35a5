"""Evaluation over benchmark subsets, robustness perturbations, calibration (dgs-net.md §5).

`evaluate` scores every subset of a benchmark folder and returns an `EvalReport`: acc, AP,
r_acc and f_acc per subset at the detector's threshold, their means, and the thresholds that
would flag 1% and 5% of the real images seen. `write_threshold` stores a calibrated threshold
in a local detector folder, so that `scan` uses it by default. Nothing here prints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aidetect.dataset import Failure, ImageDataset, find_subsets, make_loader
from aidetect.errors import UsageError
from aidetect.metrics import (
    CALIBRATION_FPRS,
    Calibration,
    Scores,
    calibrate,
    mean_scores,
    score_table,
)
from aidetect.precision import forward_on_cpu


@dataclass(frozen=True)
class Progress:
    """`images` more images of subset `subset` were scored (of `total` in it)."""

    subset: str
    images: int
    total: int


@dataclass
class Predictions:
    labels: np.ndarray  # (N,) of the images that were scored
    scores: np.ndarray  # (N,) probabilities of being AI-generated
    failures: list[Failure] = field(default_factory=list)
    logits: np.ndarray | None = None  # (N,) the scores' logits
    indices: list[int] | None = None  # (N,) which dataset item each score is


def out_of_memory_error(batch_size: int) -> UsageError:
    smaller = max(1, batch_size // 2)
    return UsageError(
        f"the GPU ran out of memory with --batch-size {batch_size}: try a smaller one "
        f"(e.g. --batch-size {smaller})"
    )


@torch.no_grad()
def predict(
    detector: torch.nn.Module,
    dataset: ImageDataset,
    *,
    device: torch.device,
    batch_size: int,
    workers: int = 0,
    indices: Sequence[int] | None = None,
    on_batch: Callable[[int], None] | None = None,
    dtype: torch.dtype | None = None,
) -> Predictions:
    """Probabilities for the images of `dataset` (or its `indices`); bad files are set aside.

    `dtype`: autocast the model to it (training's validation, whose weights stay fp32); None
    for none. `evaluate` converts the detector as `scan` does instead (`aidetect.precision`).
    """
    order = list(range(len(dataset))) if indices is None else list(indices)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    labels, scores, logit_parts, failures = [], [], [], []
    was_training = detector.training
    detector.eval()
    try:
        pin = torch.device(device).type == "cuda"
        for batch in make_loader(dataset, batches, workers=workers, pin_memory=pin):
            failures += batch.failures
            if len(batch):
                try:
                    with torch.autocast(torch.device(device).type,
                                        dtype=dtype or torch.float32, enabled=dtype is not None):
                        images = batch.images.to(device, non_blocking=True)
                        # On the CPU in the scan's groups, so scores are the scan's to the bit.
                        logits = (forward_on_cpu(detector, images)
                                  if torch.device(device).type == "cpu" else detector(images))
                except torch.OutOfMemoryError:
                    raise out_of_memory_error(batch_size) from None
                # float64, as `scan` computes its scores (on the CPU: MPS has no float64)
                logits = logits.float().cpu()
                logit_parts.append(logits.numpy())
                scores.append(torch.sigmoid(logits.double()).numpy())
                labels.append(batch.labels.numpy().astype(np.int64))
            if on_batch is not None:
                on_batch(len(batch) + len(batch.failures))
    finally:
        detector.train(was_training)
    failed = {failure.index for failure in failures}
    return Predictions(
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        scores=np.concatenate(scores).astype(np.float64) if scores else np.zeros(0),
        failures=failures,
        logits=np.concatenate(logit_parts) if logit_parts else np.zeros(0, np.float32),
        indices=[i for i in order if i not in failed],
    )


def predict_cached(detector: torch.nn.Module, dataset: ImageDataset, plan, *,
                   device: torch.device, batch_size: int, workers: int = 0,
                   on_batch: Callable[[int], None] | None = None) -> Predictions:
    """`predict` for every item of `dataset`, the model run only on `plan`'s misses
    (`aidetect.incremental.ScorePlan` of the dataset's paths, in order): the others' scores
    come from the score cache, or from an identical file scored now; new scores are kept."""
    from aidetect.cache import CachedScore
    from aidetect.incremental import unchanged

    position = {candidate.path: i for i, candidate in enumerate(plan.candidates)}
    found = predict(detector, dataset, device=device, batch_size=batch_size, workers=workers,
                    indices=[position[c.path] for c in plan.misses], on_batch=on_batch)
    # Content by its sha256; a file that could not be hashed is its own content.
    sha_of = [d.sha256 if d is not None else f"#{i}" for i, d in enumerate(plan.digests)]
    fresh, kept = {}, []
    for i, score, logit in zip(found.indices, found.scores, found.logits, strict=True):
        fresh[sha_of[i]] = float(score)
        if plan.digests[i] is not None and unchanged(dataset.paths[i], plan.digests[i]):
            kept.append((sha_of[i], CachedScore(score=float(score), logit=float(logit),
                                                format=None, mode=None, width=None,
                                                height=None)))
    plan.store(kept)
    failed = {f.index: f for f in found.failures}
    failed_shas = {sha_of[i]: f for i, f in failed.items()}
    labels, scores, failures = [], [], list(found.failures)
    for i, sha in enumerate(sha_of):
        if sha in plan.cached or (sha in fresh and i not in failed):
            score = plan.cached[sha].score if sha in plan.cached else fresh[sha]
            labels.append(dataset.labels[i])
            scores.append(score)
        elif i not in failed and sha in failed_shas:  # an identical file failed: so does this
            failures.append(Failure(i, str(dataset.paths[i]), failed_shas[sha].reason))
    if on_batch is not None:
        on_batch(len(dataset) - len(plan.misses))
    return Predictions(labels=np.asarray(labels, np.int64), scores=np.asarray(scores, np.float64),
                       failures=failures)


@dataclass(frozen=True)
class SubsetResult:
    name: str
    scores: Scores

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.scores.to_dict()}


@dataclass
class EvalReport:
    """What `eval` found: per-subset tables, their mean, calibration thresholds, bad files."""

    subsets: list[SubsetResult]
    mean: dict[str, float]
    threshold: float
    calibration: list[Calibration]
    failures: list[Failure]
    jpeg_quality: int | None = None
    blur_sigma: float | None = None

    def to_dict(self, model: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON report: metrics as fractions in [0, 1]; NaN (undefined) as null."""
        from aidetect import __version__

        return _finite(
            {
                "tool": {"name": "aidetect", "version": __version__},  # as in scan's report
                "model": model or {},
                "threshold": self.threshold,
                "perturbation": {"jpeg_quality": self.jpeg_quality, "blur_sigma": self.blur_sigma},
                "subsets": [s.to_dict() for s in self.subsets],
                "mean": self.mean,
                "calibration": [c.to_dict() for c in self.calibration],
                "skipped": [{"path": f.path, "reason": f.reason} for f in self.failures],
            }
        )


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def evaluate(
    detector: torch.nn.Module,
    bench: str | Path,
    *,
    device: torch.device,
    batch_size: int = 32,
    workers: int | None = 0,
    jpeg_quality: int | None = None,
    blur_sigma: float | None = None,
    fprs: Sequence[float] = CALIBRATION_FPRS,
    on_progress: Callable[[Progress], None] | None = None,
    precision: str = "auto",
    score_cache=None,
) -> EvalReport:
    """Score every subset of `bench` with `detector` at its threshold.

    `score_cache`: an `aidetect.incremental.EvalCache`; unchanged images of an earlier eval
    with the same weights, preprocessing, perturbations, device kind and precision are not
    scored again.

    `precision` as `aidetect scan` takes it (`aidetect.precision.choose_precision`): the
    detector is converted for it in place, as the scan converts it, so that the scores, and the
    calibrated thresholds, are the ones a scan will see.

    Raises `UsageError` when the folder holds no subset, or a subset lacks real or fake images.
    """
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
        raise UsageError(f"--jpeg-quality must be in 1..100, got {jpeg_quality}")
    if blur_sigma is not None and blur_sigma < 0:
        raise UsageError(f"--blur-sigma must be >= 0, got {blur_sigma}")
    from aidetect.precision import choose_precision, prepare_for_inference

    chosen = choose_precision(torch.device(device), precision)
    if getattr(detector, "has_lora", False):
        detector.merge_lora()  # what the scan scores with
    prepare_for_inference(detector.to(device), chosen)
    from aidetect.devices import default_threads, default_workers

    if torch.device(device).type == "cpu":
        # As `scan` sets them: bf16 kernels, and so the scores, vary with the thread count.
        torch.set_num_threads(default_threads())
    if workers is None:
        workers = default_workers(torch.device(device))
    threshold = float(detector.threshold)
    results, failures, all_labels, all_scores = [], [], [], []
    for name, image_set in find_subsets(bench):
        dataset = ImageDataset(
            image_set.paths,
            image_set.labels,
            preprocess=detector.preprocess_config,
            jpeg_quality=jpeg_quality,
            blur_sigma=blur_sigma,
        )
        total = len(dataset)

        def report(count: int, name: str = name, total: int = total) -> None:
            if on_progress is not None:
                on_progress(Progress(subset=name, images=count, total=total))

        if score_cache is None:
            found = predict(detector, dataset, device=device, batch_size=batch_size,
                            workers=workers, on_batch=report)
        else:
            found = predict_cached(detector, dataset, score_cache.plan(image_set.paths),
                                   device=device, batch_size=batch_size, workers=workers,
                                   on_batch=report)
        failures += found.failures
        for label, kind in ((0, "real"), (1, "AI-generated")):
            if not (found.labels == label).any():
                raise UsageError(
                    f"subset {name}: no readable {kind} image left "
                    f"({len(found.failures)} of {total} files unreadable)"
                )
        results.append(SubsetResult(name, score_table(found.labels, found.scores, threshold)))
        all_labels.append(found.labels)
        all_scores.append(found.scores)
    labels, scores = np.concatenate(all_labels), np.concatenate(all_scores)
    return EvalReport(
        subsets=results,
        mean=mean_scores([r.scores for r in results]),
        threshold=threshold,
        calibration=calibrate(labels, scores, fprs),
        failures=failures,
        jpeg_quality=jpeg_quality,
        blur_sigma=blur_sigma,
    )


# A rate p estimated from n real images rests on about n * p flagged ones; with fewer than
# ~10 of them the threshold moves a lot from one sample of real images to the next.
FLAGGED_FOR_AN_ESTIMATE = 10


def real_images_needed(fpr: float) -> int | None:
    """Real images a threshold for this false-positive rate should rest on (None: no number
    is enough for a rate of 0, whose threshold is just above the highest real score seen)."""
    return math.ceil(FLAGGED_FOR_AN_ESTIMATE / fpr) if fpr > 0 else None


def too_few_real_images(n_real: int, fpr: float) -> bool:
    needed = real_images_needed(fpr)
    return needed is None or n_real < needed


def write_threshold(folder: str | Path, threshold: float, *, fpr: float,
                    calibration: Calibration | None = None, data: str | None = None) -> None:
    """Store `threshold` in a local detector folder's config.json and model card, atomically."""
    from aidetect.atomic import atomic_write_text
    from aidetect.card import update_threshold
    from aidetect.config import CONFIG_NAME
    from aidetect.detector_files import read_config

    folder = Path(folder)
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"threshold {threshold} is not a probability")
    config = read_config(folder)
    config["threshold"] = float(threshold)
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    update_threshold(folder, threshold=threshold, fpr=fpr, calibration=calibration, data=data)
