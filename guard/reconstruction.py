"""Reconstruct canonical ACS axes in a target model's native space from its anchors alone.

With the target's centred unit anchors B [N, d] and a canonical axis c in R^N, we want a native
direction v whose ACS image ``B v`` is c:

- ``adjoint`` (the paper): v = unit(Bᵀ c). Cheap, but biased by the anchors' correlations.
- ``ridge``: v = argmin ||B v - c||² + λ||v||² = Bᵀ (B Bᵀ + λ I)⁻¹ c (dual form: an N x N solve).
  λ is chosen by generalised cross-validation on this regression itself, which needs no labels:
  only the target's anchors and the canonical axes.

No target labels are used by either method.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from guard.anchor_space import AnchorSpace, unit_rows

METHODS = ("ridge", "adjoint")


@dataclass
class Reconstruction:
    """``vectors`` [K, d] unit native directions; ``fidelity`` [K]: cos(B v, c), how well the
    reconstruction reproduces the canonical axis when projected back (label-free); ``lam`` per axis."""

    vectors: np.ndarray
    fidelity: np.ndarray
    lam: np.ndarray
    method: str


def _gcv_lambda(eigvals: np.ndarray, eigvecs: np.ndarray, target: np.ndarray, grid: np.ndarray) -> float:
    """λ minimising the GCV score of the ridge fit of ``target`` in the anchor span."""
    n = target.shape[0]
    rotated = eigvecs.T @ target
    best, best_score = grid[0], np.inf
    for lam in grid:
        shrink = eigvals / (eigvals + lam)
        residual = np.sum(((1.0 - shrink) * rotated) ** 2) + max(0.0, target @ target - rotated @ rotated)
        dof = n - shrink.sum()
        score = n * residual / max(dof, 1e-9) ** 2
        if score < best_score:
            best, best_score = lam, score
    return float(best)


def reconstruct(space: AnchorSpace, acs_axes: np.ndarray, method: str = "ridge", lam: float | None = None) -> Reconstruction:
    """Native directions for canonical axes ``acs_axes`` [K, N] in the model behind ``space``."""
    if method not in METHODS:
        raise ValueError(f"unknown reconstruction method {method!r}; choose one of {', '.join(METHODS)}")
    basis = space.basis_
    if basis is None:
        raise RuntimeError("AnchorSpace is not fitted")
    axes = np.atleast_2d(np.asarray(acs_axes, dtype=np.float64))
    if axes.shape[1] != basis.shape[0]:
        raise ValueError(f"canonical axes have {axes.shape[1]} anchor coordinates, the model has {basis.shape[0]} anchors")
    gram = basis @ basis.T
    if method == "adjoint":
        vectors = unit_rows(axes @ basis)
        lams = np.zeros(len(axes))
    else:
        eigvals, eigvecs = np.linalg.eigh(gram)
        eigvals = np.clip(eigvals, 0.0, None)
        scale = eigvals.mean()
        grid = scale * np.logspace(-6, 2, 33)
        lams = np.array([lam if lam is not None else _gcv_lambda(eigvals, eigvecs, c, grid) for c in axes])
        vectors = np.stack(
            [basis.T @ (eigvecs @ ((eigvecs.T @ c) / (eigvals + lam_k))) for c, lam_k in zip(axes, lams, strict=True)]
        )
        vectors = unit_rows(vectors)
    fidelity = np.sum(unit_rows(vectors @ basis.T) * unit_rows(axes), axis=1)
    return Reconstruction(vectors=vectors, fidelity=fidelity, lam=lams, method=method)
