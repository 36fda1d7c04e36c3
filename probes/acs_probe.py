"""The paper's detector: logistic regression on ACS point coordinates, trained on source models.

Stored as plain arrays (coef/intercept), never as a pickled estimator, so a bundle stays data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression


@dataclass
class LinearProbe:
    coef: np.ndarray  # [C, N] (C = 1 for binary)
    intercept: np.ndarray  # [C]

    def decision(self, coords: np.ndarray) -> np.ndarray:
        return coords @ self.coef.T + self.intercept


def fit_binary(coords: np.ndarray, labels: np.ndarray, c: float = 1.0) -> LinearProbe:
    model = LogisticRegression(C=c, max_iter=3000).fit(coords, labels)
    return LinearProbe(model.coef_.astype(np.float64), model.intercept_.astype(np.float64))


def fit_multiclass(coords: np.ndarray, labels: np.ndarray, c: float = 1.0) -> LinearProbe:
    model = LogisticRegression(C=c, max_iter=3000).fit(coords, labels)
    return LinearProbe(model.coef_.astype(np.float64), model.intercept_.astype(np.float64))
