"""Axis packs for runtime tests, built straight from the ``AxisPack`` dataclass.

Axis vectors are orthonormal, so a hidden state with a chosen z-score on every axis can be written
down exactly (``hidden_for_z``): tests then state scores, not random draws.
"""

from __future__ import annotations

import numpy as np
import torch

from guard.axes import AxisSpec
from guard.model_info import ModelInfo
from guard.pack import AxisPack
from guard.scoring import anchor_score_stats

AXES = ("refusal", "toxicity", "sycophancy")


def random_pack(
    hidden_size: int = 32,
    num_layers: int = 4,
    layer: int = 2,
    axes: tuple[str, ...] = AXES,
    anchors: np.ndarray | None = None,
    seed: int = 0,
    name: str = "tiny",
    architecture: str = "llama",
    pos_mean_z: float = 2.0,
    neg_mean_z: float = -1.0,
) -> AxisPack:
    """A pack with orthonormal random axes; anchor stats from ``anchors`` (default: Gaussian rows)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(hidden_size, len(axes))))
    vectors = q.T.astype(np.float64)
    if anchors is None:
        anchors = rng.normal(size=(96, hidden_size)) + rng.normal(size=hidden_size)
    anchors = np.asarray(anchors, dtype=np.float64)
    offset, scale = anchor_score_stats(anchors, vectors)
    k = len(axes)
    return AxisPack(
        model=ModelInfo(name, architecture, hidden_size, num_layers, layer),
        axes=[AxisSpec(a, "positive", "negative") for a in axes],
        vectors=vectors.astype(np.float32),
        anchor_mean=anchors.mean(axis=0).astype(np.float32),
        score_offset=offset.astype(np.float32),
        score_scale=scale.astype(np.float32),
        pos_mean_z=np.full(k, pos_mean_z, dtype=np.float32),
        neg_mean_z=np.full(k, neg_mean_z, dtype=np.float32),
        method="test",
        anchors_sha256="0" * 64,
        sources=["source-a", "source-b"],
    )


def hidden_for_z(pack: AxisPack, z: np.ndarray | list, seed: int = 1, norm: float = 10.0) -> torch.Tensor:
    """Rows [T, d] whose z-scores under ``pack`` are exactly ``z`` [T, K] (within float error)."""
    z = np.atleast_2d(np.asarray(z, dtype=np.float64))
    rng = np.random.default_rng(seed)
    vectors = pack.vectors.astype(np.float64)
    cos = pack.score_offset.astype(np.float64) + pack.score_scale.astype(np.float64) * z
    if np.any((cos**2).sum(axis=1) >= 1.0):
        raise ValueError("z-scores too large to realise together")
    rows = []
    for c in cos:
        w = rng.normal(size=vectors.shape[1])
        w -= vectors.T @ (vectors @ w)
        w /= np.linalg.norm(w)
        direction = c @ vectors + np.sqrt(1.0 - (c**2).sum()) * w
        rows.append(pack.anchor_mean.astype(np.float64) + norm * direction)
    return torch.tensor(np.array(rows), dtype=torch.float32)
