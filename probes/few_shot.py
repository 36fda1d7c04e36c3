"""Few-shot refinement: a handful of labelled target pairs per axis, with the anchors-only axis as a prior.

With N labelled contrast pairs of the target model, the target's own diff-of-means direction ``d_N``
is an unbiased but noisy estimate of the native axis; the reconstructed axis ``v_0`` (anchors
only) is a biased but noise-free one. The refined axis shrinks one towards the other:

    v(w) = unit((1 - w) · v_0 + w · unit(d_N)),   w in [0, 1]

``w`` is chosen without any test label, by cross-validation on the N shots themselves: each shot
pair is held out in turn (k-fold for larger N), ``d`` is fitted on the others, and the held-out
pairs are scored. The smallest ``w`` whose pooled held-out AUROC is within one standard error of the
best one wins (the "one-standard-error rule"; Hanley-McNeil error of an AUROC on N pairs): trust the
prior until the shots beat it by more than their own noise, so a few shots cannot swing the axis.
Why not the best CV AUROC: CV only sees the shots' kind of data, and on public harmful requests the
best-CV weights pulled the refusal axis down by up to 0.13 (``bench/results/README.md`` §6). N = 0
gives ``v_0``; with many shots the error shrinks and ``w`` can approach 1, the native ceiling. Scores
keep their meaning: offsets and scales are re-fitted on the target's own anchors (``guard.scoring``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from guard.anchor_space import unit_rows
from guard.pack import AxisPack
from guard.scoring import AnchorZScorer, centred_cosines
from probes.directions import native_direction
from probes.operating_points import auroc, auroc_standard_error

WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
MAX_FOLDS = 10


@dataclass(frozen=True)
class Refinement:
    """One axis refined from ``shots`` pairs: the ``vector``, the chosen ``weight`` and its CV AUROC
    (``cv_auroc``; NaN with fewer than two shots, where the prior is kept)."""

    vector: np.ndarray
    weight: float
    cv_auroc: float
    shots: int


def combine(prior: np.ndarray, direction: np.ndarray, weight: float) -> np.ndarray:
    """``unit((1 - w) · prior + w · unit(direction))``."""
    return unit_rows((1.0 - weight) * unit_rows(prior) + weight * unit_rows(direction))


def _cv_auroc(prior: np.ndarray, pos: np.ndarray, neg: np.ndarray, mean: np.ndarray, weight: float) -> float:
    n = len(pos)
    folds = np.array_split(np.arange(n), min(n, MAX_FOLDS))
    held_pos, held_neg = [], []
    for fold in folds:
        train = np.setdiff1d(np.arange(n), fold)
        v = combine(prior, native_direction(pos[train], neg[train]), weight)
        held_pos.append(centred_cosines(pos[fold], mean, v[None])[:, 0])
        held_neg.append(centred_cosines(neg[fold], mean, v[None])[:, 0])
    return auroc(np.concatenate(held_pos), np.concatenate(held_neg))


def refine_axis(prior: np.ndarray, pos: np.ndarray, neg: np.ndarray, anchor_mean: np.ndarray) -> Refinement:
    """Shrink the target's ``pos``/``neg`` shot direction towards ``prior`` (all at one layer)."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    n = min(len(pos), len(neg))
    if n < 2:  # nothing to cross-validate: keep the prior
        return Refinement(unit_rows(np.asarray(prior, np.float64)), 0.0, float("nan"), n)
    pos, neg = pos[:n], neg[:n]
    scores = {w: _cv_auroc(prior, pos, neg, anchor_mean, w) for w in WEIGHTS}
    top = max(scores.values())
    chosen = min(w for w in WEIGHTS if scores[w] >= top - auroc_standard_error(top, n, n))
    return Refinement(combine(prior, native_direction(pos, neg), chosen), float(chosen), scores[chosen], n)


def refine_pack(pack: AxisPack, shots: dict[str, tuple[np.ndarray, np.ndarray]],
                anchors_by_layer: dict[int, np.ndarray]) -> AxisPack:
    """The pack with each axis in ``shots`` ({axis: (pos, neg) activations at that axis' layer})
    refined; z offsets/scales re-fitted on the target's anchors at the axis' layer."""
    vectors = np.array(pack.vectors, np.float64)
    offset, scale = np.array(pack.score_offset, np.float64), np.array(pack.score_scale, np.float64)
    report = {}
    for axis, (pos, neg) in shots.items():
        k = pack.axis_index(axis)
        anchors = anchors_by_layer[pack.layers_by_axis[k]]
        refined = refine_axis(vectors[k], pos, neg, anchors.mean(axis=0))
        vectors[k] = refined.vector
        scorer = AnchorZScorer(refined.vector[None]).fit(anchors)
        offset[k], scale[k] = scorer.offset_[0], scorer.scale_[0]
        cv = None if np.isnan(refined.cv_auroc) else round(refined.cv_auroc, 4)
        report[axis] = {"shots": refined.shots, "weight": refined.weight, "cv_auroc": cv}
    return dataclasses.replace(
        pack, vectors=vectors.astype(np.float32), score_offset=offset.astype(np.float32),
        score_scale=scale.astype(np.float32), method=f"{pack.method}+few_shot" if shots else pack.method,
        diagnostics={**pack.diagnostics, "few_shot": report},
    )
