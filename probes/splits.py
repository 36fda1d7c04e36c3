"""A fixed, seeded hold-out of calibration pairs, for data that ships no test split."""

from __future__ import annotations

import numpy as np

from probes.catalogue import Catalogue


def holdout_split(catalogue: Catalogue, fraction: float = 0.3, seed: int = 0) -> Catalogue:
    """Move a seeded ``fraction`` of each axis' calibration pairs to its test split (same for every model)."""
    calibration, test = {}, {}
    for axis, pairs in catalogue.calibration.items():
        order = np.random.default_rng([seed, sum(map(ord, axis))]).permutation(len(pairs))
        n_test = max(1, round(fraction * len(pairs)))
        held = set(order[:n_test].tolist())
        test[axis] = [p for i, p in enumerate(pairs) if i in held]
        calibration[axis] = [p for i, p in enumerate(pairs) if i not in held]
    return Catalogue(catalogue.root, catalogue.anchors, calibration, test, catalogue.cards)
