"""Which layer to read each model at.

Sources (labels available): the combination of per-source layers, over a depth grid, that maximises
the cross-source cosine of same-axis directions in ACS (the paper's rule, applied to sources only).
Targets (no labels): the layer whose anchor geometry is most similar to the sources' chosen layers,
by linear CKA of anchor kernels — anchors only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from guard.anchor_space import AnchorSpace, linear_cka
from probes.activations import ModelActivations
from probes.directions import native_directions

MAX_JOINT_COMBINATIONS = 512


@dataclass
class LayerChoice:
    layers: dict[str, int]
    score: float
    reason: str
    table: dict[str, float]


def _projected(model: ModelActivations, layer: int, axes: list[str]) -> np.ndarray:
    space = AnchorSpace().fit(model.anchors[layer])
    dirs = native_directions({a: model.pos[a][layer] for a in axes}, {a: model.neg[a][layer] for a in axes}, axes)
    return space.project_direction(dirs)


def _cross_source_agreement(projected: list[np.ndarray]) -> float:
    pairs = [np.mean(np.sum(a * b, axis=1)) for a, b in itertools.combinations(projected, 2)]
    return float(np.mean(pairs))


def choose_source_layers(sources: list[ModelActivations], axes: list[str]) -> LayerChoice:
    """Joint grid search over the sources' candidate layers (shared depth fraction if too many)."""
    names = [m.info.name for m in sources]
    if len(sources) < 2:
        only = sources[0]
        layer = only.layers[len(only.layers) // 2]
        return LayerChoice({only.info.name: layer}, float("nan"), "single source: middle candidate layer", {})
    cache = {(i, layer): _projected(m, layer, axes) for i, m in enumerate(sources) for layer in m.layers}
    candidates = [m.layers for m in sources]
    if np.prod([len(c) for c in candidates]) <= MAX_JOINT_COMBINATIONS:
        combos = list(itertools.product(*candidates))
    else:  # same relative position in every source's grid
        combos = [tuple(c[min(i, len(c) - 1)] for c in candidates) for i in range(max(len(c) for c in candidates))]
    table = {}
    for combo in combos:
        table[",".join(map(str, combo))] = _cross_source_agreement([cache[(i, layer)] for i, layer in enumerate(combo)])
    best = max(table, key=lambda key: table[key])
    layers = dict(zip(names, map(int, best.split(",")), strict=True))
    return LayerChoice(layers, table[best], "max mean cross-source same-axis ACS cosine over the depth grid", table)


def choose_target_layer(target_anchors: dict[int, np.ndarray], source_kernels: np.ndarray) -> LayerChoice:
    """Layer whose anchor kernel has the highest mean linear CKA with the sources' kernels [S, N, N]."""
    table = {}
    for layer, acts in sorted(target_anchors.items()):
        gram = AnchorSpace().fit(acts).gram()
        table[str(layer)] = float(np.mean([linear_cka(gram, k) for k in source_kernels]))
    best = max(table, key=lambda key: table[key])
    return LayerChoice({"target": int(best)}, table[best], "max mean linear CKA of anchor kernels vs sources", table)
