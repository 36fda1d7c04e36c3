"""The supervised ceiling (scripts/refusal_ceiling.py) is scored out of fold: it finds real structure and
cannot score a fold with a readout fitted on that fold's labels."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.refusal_ceiling import out_of_fold_auroc


@pytest.mark.parametrize("method", ["cv_mean_diff", "cv_logistic"])
def test_out_of_fold_auroc_finds_a_planted_direction(method):
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(60), np.zeros(90)].astype(int)
    x = rng.normal(size=(150, 40)) + 5.0
    x[:, 3] += 3.0 * y  # the only difference between the classes
    assert out_of_fold_auroc(x, y, method, x.mean(0)) > 0.9


@pytest.mark.parametrize("method", ["cv_mean_diff", "cv_logistic"])
def test_out_of_fold_auroc_does_not_see_the_held_out_labels(method):
    # More dimensions than samples and labels unrelated to the data: a readout fitted on all the labels
    # separates them perfectly in-sample, so only held-out scoring stays near chance.
    rng = np.random.default_rng(1)
    y = rng.permutation(np.r_[np.ones(50), np.zeros(50)].astype(int))
    x = rng.normal(size=(100, 400))
    assert abs(out_of_fold_auroc(x, y, method, x.mean(0)) - 0.5) < 0.15
