"""Anchor coordinate space (ACS): a model's hidden states as centred cosines to its own anchors.

Fit on one model's activations for the shared anchor prompts A [N, d] at one layer:
``mean = A.mean(0)`` and ``basis`` = the centred anchors normalised to unit length [N, d]. Then

- a point h maps to ``basis @ unit(h - mean)`` in R^N (its centred cosine to every anchor);
- a direction v maps to ``basis @ unit(v)`` in R^N (no centring: directions are differences).

Because every model runs the same N anchors, R^N is a coordinate system shared by all models,
whatever their hidden size. Estimator-style API (``fit``/``transform``) on plain numpy arrays.
"""

from __future__ import annotations

import numpy as np


def unit_rows(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Normalise each row (or a single vector) to unit L2 norm."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


class AnchorSpace:
    """Anchor coordinate space of one model at one layer."""

    def __init__(self, standardise: bool = False) -> None:
        # standardise: rescale each coordinate by the anchors' own coordinate spread, which removes
        # model-specific anisotropy (some models' cosines all sit near 0.9, others near 0.1).
        self.standardise = standardise
        self.mean_: np.ndarray | None = None
        self.basis_: np.ndarray | None = None
        self.coord_mean_: np.ndarray | None = None
        self.coord_std_: np.ndarray | None = None

    def fit(self, anchor_acts: np.ndarray) -> AnchorSpace:
        acts = np.asarray(anchor_acts, dtype=np.float64)
        if acts.ndim != 2 or acts.shape[0] < 2:
            raise ValueError(f"anchor activations must be [N>=2, d], got {acts.shape}")
        self.mean_ = acts.mean(axis=0)
        self.basis_ = unit_rows(acts - self.mean_)
        self_coords = self.basis_ @ self.basis_.T
        self.coord_mean_ = self_coords.mean(axis=0)
        self.coord_std_ = np.maximum(self_coords.std(axis=0), 1e-6)
        return self

    @property
    def n_anchors(self) -> int:
        return self._basis().shape[0]

    @property
    def hidden_size(self) -> int:
        return self._basis().shape[1]

    def _basis(self) -> np.ndarray:
        if self.basis_ is None:
            raise RuntimeError("AnchorSpace is not fitted: call fit(anchor_activations) first")
        return self.basis_

    def transform(self, hidden: np.ndarray) -> np.ndarray:
        """Points [n, d] -> ACS coordinates [n, N] (centred cosine to each anchor)."""
        basis = self._basis()
        assert self.mean_ is not None  # set together with basis_
        coords = unit_rows(np.asarray(hidden, dtype=np.float64) - self.mean_) @ basis.T
        if self.standardise:
            coords = (coords - self.coord_mean_) / self.coord_std_
        return coords

    def project_direction(self, directions: np.ndarray) -> np.ndarray:
        """Directions [K, d] (or [d]) -> unit ACS directions [K, N] (or [N])."""
        return unit_rows(unit_rows(np.asarray(directions, dtype=np.float64)) @ self._basis().T)

    def gram(self) -> np.ndarray:
        """The anchor kernel [N, N]: centred cosines between anchors (what CKA compares)."""
        basis = self._basis()
        return basis @ basis.T


def linear_cka(gram_a: np.ndarray, gram_b: np.ndarray) -> float:
    """Linear CKA between two [N, N] kernels over the same N inputs (1 = same geometry)."""
    n = gram_a.shape[0]
    centring = np.eye(n) - 1.0 / n
    a = centring @ gram_a @ centring
    b = centring @ gram_b @ centring
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
