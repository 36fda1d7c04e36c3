"""TPR at a fixed FPR, with bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from probes.operating_points import (
    _rank_auroc,
    auroc,
    auroc_interval,
    auroc_standard_error,
    operating_points,
    threshold_at_fpr,
    tpr_at_fpr,
)


def test_threshold_flags_at_most_the_requested_fraction_of_negatives():
    neg = np.arange(100, dtype=float)  # 0..99
    assert threshold_at_fpr(neg, 0.01) == 98.0  # only 99 lies above
    assert threshold_at_fpr(neg, 0.05) == 94.0  # 95..99 lie above
    for fpr in (0.01, 0.05, 0.2):
        assert np.mean(neg > threshold_at_fpr(neg, fpr)) <= fpr
    with pytest.raises(ValueError):
        threshold_at_fpr(neg, 0.0)


def test_tpr_at_fpr_on_known_scores():
    neg = np.arange(100, dtype=float)
    pos = np.array([97.5, 98.5, 99.5, 200.0, -1.0])
    assert tpr_at_fpr(pos, neg, 0.01) == pytest.approx(3 / 5)  # above 98
    assert tpr_at_fpr(pos, neg, 0.05) == pytest.approx(4 / 5)  # above 94
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    rng = np.random.default_rng(0)
    tied_pos, tied_neg = rng.integers(0, 5, 40).astype(float), rng.integers(0, 4, 60).astype(float)
    assert _rank_auroc(tied_pos, tied_neg) == pytest.approx(auroc(tied_pos, tied_neg))


def test_bootstrap_intervals_cover_the_estimate_and_shrink_with_separation():
    rng = np.random.default_rng(1)
    neg = rng.normal(size=400)
    weak, strong = rng.normal(0.5, 1, size=300), rng.normal(3.0, 1, size=300)
    for pos in (weak, strong):
        for point in operating_points(pos, neg, rounds=300):
            assert point.low <= point.tpr <= point.high
            assert point.n_pos == 300 and point.n_neg == 400
    weak_1, strong_1 = operating_points(weak, neg, rounds=300)[0], operating_points(strong, neg, rounds=300)[0]
    assert strong_1.tpr > weak_1.tpr
    low, high = auroc_interval(strong, neg, rounds=300)
    assert low <= auroc(strong, neg) <= high


def test_the_analytic_auroc_standard_error_matches_resampling_and_shrinks_with_the_sample():
    """Hanley-McNeil's error (the few-shot weight rule's noise level) against a direct resampling of
    fresh samples of the same two distributions."""
    rng = np.random.default_rng(3)
    n = 60
    draws = [auroc(rng.normal(1.0, 1.0, n), rng.normal(0.0, 1.0, n)) for _ in range(400)]
    analytic = auroc_standard_error(float(np.mean(draws)), n, n)
    assert analytic == pytest.approx(float(np.std(draws)), rel=0.25)
    assert auroc_standard_error(0.8, 5, 5) > auroc_standard_error(0.8, 50, 50) > auroc_standard_error(0.8, 500, 500)
    assert auroc_standard_error(1.0, 10, 10) == 0.0
