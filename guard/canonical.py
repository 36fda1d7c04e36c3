"""Canonical axes: native directions of several source models, projected to ACS and averaged."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from guard.anchor_space import unit_rows


@dataclass
class CanonicalAxes:
    """``axes`` [K, N] unit rows; ``agreement`` [K]: mean pairwise cosine between the sources'
    projected directions (1 = the sources agree exactly; label-free quality signal per axis)."""

    axes: np.ndarray
    agreement: np.ndarray


def canonical_axes(projected: list[np.ndarray]) -> CanonicalAxes:
    """``projected``: per source, its native directions in ACS [K, N]. Mean of unit rows, renormalised."""
    if not projected:
        raise ValueError("need at least one source's projected directions")
    stack = np.stack([unit_rows(p) for p in projected])  # [S, K, N]
    axes = unit_rows(stack.mean(axis=0))
    s = stack.shape[0]
    if s < 2:
        agreement = np.ones(stack.shape[1])
    else:
        pair_cos = [np.sum(stack[i] * stack[j], axis=-1) for i in range(s) for j in range(i + 1, s)]
        agreement = np.mean(pair_cos, axis=0)
    return CanonicalAxes(axes=axes, agreement=agreement)
