"""The one score definition used everywhere (eval, transformers and vLLM monitors).

z_k(h) = (cos(h - mean, v_k) - offset_k) / scale_k; see ``guard.pack`` for the meaning.
Works on numpy arrays or torch tensors (the monitor passes torch tensors on the model's device).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def centred_cosines(hidden: Any, mean: Any, vectors: Any) -> Any:
    """cos(h - mean, v_k) for every row h and unit vector v_k: [T, d] x [K, d] -> [T, K]."""
    centred = hidden - mean
    if isinstance(hidden, np.ndarray):
        norms = np.linalg.norm(centred, axis=-1, keepdims=True)
        return (centred @ vectors.T) / np.maximum(norms, 1e-6)
    norms = centred.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return (centred @ vectors.T) / norms


def z_scores(hidden: Any, mean: Any, vectors: Any, offset: Any, scale: Any) -> Any:
    """Normalised axis scores [T, K] (see module docstring)."""
    return (centred_cosines(hidden, mean, vectors) - offset) / scale


def anchor_score_stats(anchor_acts: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """offset/scale of the centred cosine over a model's own anchors (the z normalisation)."""
    mean = anchor_acts.mean(axis=0)
    cos = centred_cosines(anchor_acts.astype(np.float64), mean, vectors.astype(np.float64))
    return cos.mean(axis=0), np.maximum(cos.std(axis=0), 1e-6)


class AnchorZScorer:
    """The z normalisation as one object: ``fit(anchors)`` on a model's own anchor activations at one
    layer, then ``transform(h)`` gives the axes' z-scores [T, K] of any hidden states there (float64)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def fit(self, anchors: np.ndarray) -> AnchorZScorer:
        self.mean_ = anchors.mean(axis=0)
        self.offset_, self.scale_ = anchor_score_stats(anchors, self.vectors)
        return self

    def transform(self, hidden: np.ndarray) -> np.ndarray:
        return z_scores(hidden.astype(np.float64), self.mean_, self.vectors, self.offset_, self.scale_)
