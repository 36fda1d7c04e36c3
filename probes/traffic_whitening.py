"""Whitening an axis against ordinary traffic: label-free nuisance removal (issue #9).

A reconstructed axis is a difference of means carried over from other models. Read as a plain
direction it also picks up whatever varies a lot in *ordinary* prompts along it: prompt length
above all (the shipped refusal score's Spearman rho with token count is +0.6 to +0.8 on benign
prompts), topic, format. Linear discriminant analysis would divide by the within-class covariance;
we have no labels on the target, but an operator has a sample of its ordinary traffic, and its
covariance is the part of the within-class covariance a deployed threshold has to live with:

    w = (S + ridge * mean_eigenvalue(S) * I)^-1 v,      S = covariance of the benign sample

The ridge (relative to the sample's mean variance, so it means the same at every layer and model)
keeps the inverse stable with a few hundred prompts in 576-896 dimensions and pulls ``w`` back
toward ``v`` as it grows (``ridge -> inf`` gives ``v``). Only unlabelled benign prompts are used.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from guard.errors import AxisguardError
from guard.pack import AxisPack
from guard.scoring import AnchorZScorer

DEFAULT_RIDGE = 1.0
# Below this many ordinary prompts the covariance says little beyond the ridge; refuse rather than pretend.
MIN_PROMPTS = 50
# pack.diagnostics key of the whitening sample's fingerprints: one list for every axis whitened in one pass
PROMPT_KEYS = "traffic_whitening_prompt_keys"


def traffic_covariance(benign: np.ndarray) -> np.ndarray:
    """Covariance [d, d] (float64) of benign hidden states [n, d] at one layer."""
    x = np.asarray(benign, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least two benign hidden states as [n, d], got shape {x.shape}")
    x = x - x.mean(axis=0)
    return x.T @ x / (len(x) - 1)


def whiten_direction(vector: np.ndarray, benign: np.ndarray, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """The unit direction ``(S + ridge * tr(S)/d * I)^-1 v`` for one axis vector ``v`` [d]."""
    if ridge <= 0:
        raise ValueError(f"ridge must be > 0 (got {ridge}); it is relative to the sample's mean variance")
    v = np.asarray(vector, np.float64)
    cov = traffic_covariance(benign)
    if cov.shape[0] != v.shape[0]:
        raise ValueError(f"axis has {v.shape[0]} dimensions, the benign hidden states {cov.shape[0]}")
    d = len(v)
    w = np.linalg.solve(cov + ridge * np.trace(cov) / d * np.eye(d), v)
    return w / np.linalg.norm(w)


def prompt_keys(prompts: list[str]) -> list[str]:
    """Short per-prompt fingerprints (first 12 hex digits of sha256), stored in the pack so that
    `axisguard thresholds` can tell when it is handed the prompts an axis was whitened on."""
    return [hashlib.sha256(p.encode("utf-8")).hexdigest()[:12] for p in prompts]


def whitened_on(pack: AxisPack, prompts: list[str]) -> dict[str, int]:
    """{axis: how many of ``prompts`` that axis was whitened on} for the pack's whitened axes."""
    seen = len(set(prompt_keys(prompts)) & set(pack.diagnostics.get(PROMPT_KEYS, [])))
    return {axis: seen for axis in pack.diagnostics.get("traffic_whitening", {})}


def require_enough_prompts(n: int) -> None:
    """Refuse a whitening sample too small to say more than the ridge does (checked before any model runs)."""
    if n < MIN_PROMPTS:
        raise AxisguardError(f"whitening needs at least {MIN_PROMPTS} ordinary prompts, got {n}",
                             "pass a larger sample of your everyday traffic, or 'builtin' (473 requests)")


def whiten_pack(pack: AxisPack, axes: list[str], benign_by_layer: dict[int, np.ndarray],
                anchors_by_layer: dict[int, np.ndarray], ridge: float = DEFAULT_RIDGE,
                prompts: list[str] | None = None) -> AxisPack:
    """The pack with each of ``axes`` whitened against the benign hidden states at that axis' layer;
    z offsets/scales re-fitted on the target's anchors there (the score keeps its meaning: anchor units).
    ``prompts`` (the benign texts, in order) are recorded as short fingerprints."""
    n = len(next(iter(benign_by_layer.values()))) if benign_by_layer else 0
    require_enough_prompts(n)
    vectors = np.array(pack.vectors, np.float64)
    offset, scale = np.array(pack.score_offset, np.float64), np.array(pack.score_scale, np.float64)
    report = {}
    for axis in axes:
        k = pack.axis_index(axis)
        layer = pack.layers_by_axis[k]
        white = whiten_direction(vectors[k], benign_by_layer[layer], ridge)
        report[axis] = {"prompts": n, "ridge": ridge, "layer": layer, "cos_to_plain": round(float(white @ vectors[k]), 4)}
        scorer = AnchorZScorer(white[None]).fit(np.asarray(anchors_by_layer[layer], np.float64))
        vectors[k], offset[k], scale[k] = white, scorer.offset_[0], scorer.scale_[0]
    return dataclasses.replace(
        pack, vectors=vectors.astype(np.float32), score_offset=offset.astype(np.float32),
        score_scale=scale.astype(np.float32),
        diagnostics={**pack.diagnostics, "traffic_whitening": report, PROMPT_KEYS: prompt_keys(prompts or [])},
    )
