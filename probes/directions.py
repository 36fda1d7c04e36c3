"""Native behaviour directions: unit difference of class means."""

from __future__ import annotations

import numpy as np

from guard.anchor_space import unit_rows


def native_direction(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """unit(mean(pos) - mean(neg)) for activations [n, d]; points towards the positive side."""
    return unit_rows(np.asarray(pos, np.float64).mean(axis=0) - np.asarray(neg, np.float64).mean(axis=0))


def native_directions(pos: dict[str, np.ndarray], neg: dict[str, np.ndarray], axes: list[str]) -> np.ndarray:
    """[K, d] native directions for ``axes`` in order."""
    return np.stack([native_direction(pos[a], neg[a]) for a in axes])
