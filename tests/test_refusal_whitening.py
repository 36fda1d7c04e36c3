"""The paired bootstrap behind scripts/refusal_whitening's "whitening's own share" intervals."""

from __future__ import annotations

import numpy as np

from guard.scoring import AnchorZScorer
from scripts.refusal_whitening import paired_delta


def scorer(direction: np.ndarray, anchors: np.ndarray) -> AnchorZScorer:
    return AnchorZScorer((direction / np.linalg.norm(direction))[None]).fit(anchors)


def test_a_scorer_against_itself_changes_nothing_and_a_better_one_shows():
    rng = np.random.default_rng(0)
    d = 16
    anchors = rng.normal(size=(200, d))
    pos, neg = rng.normal(size=(150, d)) + 0.8 * np.eye(d)[0], rng.normal(size=(150, d))
    plain = scorer(np.eye(d)[0] + np.eye(d)[1] * 2, anchors)  # mostly noise dimension 1
    better = scorer(np.eye(d)[0], anchors)
    assert paired_delta(plain, plain, pos, neg) == [0.0, 0.0]
    low, high = paired_delta(plain, better, pos, neg)
    assert 0 < low < high
    low, high = paired_delta(better, plain, pos, neg)
    assert low < high < 0
