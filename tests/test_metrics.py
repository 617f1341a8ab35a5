"""Accuracy, AP (scikit-learn's definition, ties included), per-class accuracy, FPR thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from aidetect.metrics import (
    accuracy,
    average_precision,
    calibrate,
    mean_scores,
    score_table,
    threshold_at_fpr,
)


def test_ap_by_hand_without_ties():
    # Ranked: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg).
    # Recall steps at ranks 1 and 3: 1/2 * 1/1 + 1/2 * 2/3 = 5/6.
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(5 / 6)


def test_ap_by_hand_with_ties():
    # 0.8 is shared by one positive and one negative: they enter together, precision 2/3 at
    # recall 1 (after 0.9 gave precision 1 at recall 1/2): 1/2 * 1 + 1/2 * 2/3 = 5/6.
    assert average_precision([1, 1, 0, 0], [0.9, 0.8, 0.8, 0.1]) == pytest.approx(5 / 6)
    # All scores tied: one operating point, precision = positive rate.
    assert average_precision([1, 0, 0, 1, 0], [0.5] * 5) == pytest.approx(2 / 5)
    # Breaking the tie by position would give 1 (positives first) or 7/12 (negative first);
    # the tied group enters at once: precision 2/3 at recall 1.
    assert average_precision([1, 0, 1], [0.7, 0.7, 0.7]) == pytest.approx(2 / 3)
    assert average_precision_score([1, 0, 1], [0.7, 0.7, 0.7]) == pytest.approx(2 / 3)
    assert average_precision([1, 0, 1, 0], [0.9, 0.4, 0.4, 0.4]) == pytest.approx(
        1 / 2 * 1 + 1 / 2 * 2 / 4
    )


def test_ap_equals_scikit_learn_on_random_scores_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 40))
        labels = rng.integers(0, 2, n)
        if labels.sum() == 0:
            labels[0] = 1
        scores = rng.integers(0, 6, n) / 5  # many ties
        assert average_precision(labels, scores) == pytest.approx(
            average_precision_score(labels, scores), abs=1e-12
        )


def test_ap_undefined_without_positives():
    assert math.isnan(average_precision([0, 0], [0.2, 0.3]))


def test_accuracy_uses_strictly_above_threshold():
    assert accuracy([1, 0], [0.5, 0.5]) == 0.5  # 0.5 is not above 0.5: judged real
    assert accuracy([1, 0], [0.51, 0.2], threshold=0.5) == 1.0


def test_score_table_and_mean():
    table = score_table([0, 0, 0, 1, 1], [0.1, 0.6, 0.2, 0.9, 0.4])
    assert table.r_acc == pytest.approx(2 / 3) and table.f_acc == pytest.approx(1 / 2)
    assert table.acc == pytest.approx(3 / 5)
    assert (table.n_real, table.n_fake) == (3, 2)
    other = score_table([0, 1], [0.1, 0.9])
    mean = mean_scores([table, other])
    assert mean["acc"] == pytest.approx((3 / 5 + 1) / 2)  # subsets count once each
    assert set(mean) == {"acc", "ap", "r_acc", "f_acc"}


def test_threshold_at_fpr_is_the_lowest_that_keeps_the_rate():
    real = np.arange(1, 101) / 101  # 100 distinct real scores
    t1 = threshold_at_fpr(real, 0.01)
    assert np.mean(real > t1) == pytest.approx(0.01)
    # Any lower real score as threshold would flag 2 images.
    assert np.mean(real > np.sort(real)[-3]) > 0.01
    t5 = threshold_at_fpr(real, 0.05)
    assert np.mean(real > t5) == pytest.approx(0.05) and t5 < t1
    # Fewer images than 1 / fpr: the highest real score, so no real image is flagged.
    assert threshold_at_fpr([0.2, 0.7, 0.4], 0.01) == 0.7
    # Ties at the cut: the rate stays at or below the target.
    tied = [0.9, 0.9, 0.9, 0.1] + [0.05] * 96
    assert np.mean(np.asarray(tied) > threshold_at_fpr(tied, 0.02)) <= 0.02


def test_calibrate_reports_observed_rates():
    labels = [0] * 100 + [1] * 10
    rng = np.random.default_rng(1)
    scores = np.r_[rng.uniform(0, 0.8, 100), rng.uniform(0.5, 1, 10)]
    results = calibrate(labels, scores, (0.01, 0.05))
    assert [c.fpr for c in results] == [0.01, 0.05]
    for c in results:
        assert c.observed_fpr <= c.fpr and c.n_real == 100
        assert c.tpr == pytest.approx(np.mean(scores[100:] > c.threshold))
    with pytest.raises(ValueError):
        threshold_at_fpr([], 0.01)
