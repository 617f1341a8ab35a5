"""Detection metrics of the evaluation protocol (dgs-net.md section 5), on NumPy arrays.

Scores are probabilities that an image is AI-generated; labels are 1 for AI-generated, 0 for
real. An image is judged AI-generated when its score is strictly above the threshold, as the
detector does at inference. Average precision follows scikit-learn's `average_precision_score`
exactly (a step-wise sum over distinct thresholds, no interpolation), so published tables and
ours can be compared; scikit-learn itself is only a test dependency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

# The false-positive rates `eval` reports thresholds for (1% and 5% of real images flagged).
CALIBRATION_FPRS = (0.01, 0.05)


def _arrays(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray):
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (AI-generated)")
    return y, s


def average_precision(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> float:
    """Area under the precision-recall curve as sum_n (R_n - R_{n-1}) P_n.

    The operating points are the distinct score values, highest first; tied scores enter
    together. Equal to scikit-learn's `average_precision_score`. NaN when there is no positive.
    """
    y, s = _arrays(labels, scores)
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    # The last index of each run of equal scores: one operating point per distinct score.
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[last]
    predicted = last + 1
    precision = tp / predicted
    recall_gain = np.diff(np.r_[0, tp]) / positives
    return float(np.sum(recall_gain * precision))


def accuracy(labels, scores, threshold: float = 0.5) -> float:
    """Fraction of images judged correctly (score > threshold means AI-generated). NaN if empty."""
    y, s = _arrays(labels, scores)
    if y.size == 0:
        return float("nan")
    return float(np.mean((s > threshold).astype(np.int64) == y))


@dataclass(frozen=True)
class Scores:
    """The four numbers of a results table, as fractions in [0, 1], and the counts behind them."""

    acc: float
    ap: float
    r_acc: float  # accuracy on real images: 1 - false-positive rate
    f_acc: float  # accuracy on AI-generated images: the detection rate
    n_real: int
    n_fake: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def score_table(labels, scores, threshold: float = 0.5) -> Scores:
    """acc, AP, r_acc and f_acc of one test subset at `threshold`."""
    y, s = _arrays(labels, scores)
    real, fake = s[y == 0], s[y == 1]
    return Scores(
        acc=accuracy(y, s, threshold),
        ap=average_precision(y, s),
        r_acc=float(np.mean(real <= threshold)) if real.size else float("nan"),
        f_acc=float(np.mean(fake > threshold)) if fake.size else float("nan"),
        n_real=int(real.size),
        n_fake=int(fake.size),
    )


def mean_scores(rows: Sequence[Scores]) -> dict[str, float]:
    """The mean of each metric over subsets, each subset counting once (as the papers do)."""
    return {
        name: float(np.mean([getattr(row, name) for row in rows])) if rows else float("nan")
        for name in ("acc", "ap", "r_acc", "f_acc")
    }


def threshold_at_fpr(real_scores: Sequence[float] | np.ndarray, fpr: float) -> float:
    """The lowest threshold that flags at most `fpr` of these real images (score > threshold).

    With the real scores sorted from high to low, s_1 >= s_2 >= ..., and k = floor(fpr * n),
    the threshold is s_{k+1}: at most k real images score above it, and any lower threshold
    would flag at least k + 1 of them. With fewer than 1 / fpr real images, k = 0 and the
    threshold is the highest real score.
    """
    s = np.sort(np.asarray(real_scores, dtype=np.float64).ravel())[::-1]
    if s.size == 0:
        raise ValueError("no real images to calibrate on")
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"the false-positive rate must be in [0, 1), got {fpr}")
    k = int(np.floor(fpr * s.size + 1e-9))  # the epsilon absorbs 0.07 * 100 = 7.000000000000001
    return float(s[min(k, s.size - 1)])


@dataclass(frozen=True)
class Calibration:
    """A threshold chosen for a target false-positive rate, and what it gives on the data seen."""

    fpr: float  # the target
    threshold: float
    observed_fpr: float  # the fraction of the real images above the threshold (<= fpr)
    tpr: float  # the fraction of AI-generated images above it (NaN without any)
    n_real: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def calibrate(labels, scores, fprs: Sequence[float] = CALIBRATION_FPRS) -> list[Calibration]:
    """Thresholds giving each false-positive rate in `fprs` on the real images among `scores`."""
    y, s = _arrays(labels, scores)
    real, fake = s[y == 0], s[y == 1]
    results = []
    for fpr in fprs:
        threshold = threshold_at_fpr(real, fpr)
        results.append(
            Calibration(
                fpr=float(fpr),
                threshold=threshold,
                observed_fpr=float(np.mean(real > threshold)),
                tpr=float(np.mean(fake > threshold)) if fake.size else float("nan"),
                n_real=int(real.size),
            )
        )
    return results
