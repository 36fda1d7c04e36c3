"""Per-axis layers, chosen without target labels.

``adapt`` reads every axis at one target layer: the one whose anchor geometry best matches the
sources' (linear CKA), where the sources sit at the layers that maximise cross-source agreement
*averaged over all axes*. Behaviours live at different depths, though: on Qwen2.5 the refusal
direction read at that shared layer barely separates external harmful requests from look-alikes.

Rule here, per axis (sources' labels only, target's anchors only):

1. source layers: the per-source layers (depth grid) where the sources' native directions for
   *this axis* agree most in anchor coordinates (``choose_source_layers`` restricted to the axis);
2. target layer, one of
   - ``cka``: the target layer whose anchor kernel is closest (linear CKA) to the sources' kernels
     at those layers;
   - ``depth``: the target grid layer nearest the sources' mean relative depth;
   - ``depth_cka`` (default): among the target layers within ``DEPTH_WINDOW`` relative depth of the
     sources' mean, the one with the highest CKA — depth says where, CKA checks the geometry;
3. optionally several layers combined: the ``top`` best source-layer combinations, each mapped
   to a target layer, scores averaged (z units are comparable across layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from guard.anchor_space import AnchorSpace, linear_cka
from probes.activations import ModelActivations
from probes.axis_layers import DEPTH_WINDOW, nearest_layer, per_axis_canonical, relative_depth
from probes.layer_choice import choose_source_layers

# ``depth_cka`` is the rule the product ships (``probes.axis_layers``, from the bundle's stored kernels);
# this module evaluates it and its variants from the sources' activations (``make external``).
RULES = ("cka", "depth", "depth_cka")


@dataclass(frozen=True)
class AxisLayers:
    """Where one axis is read: ``source_layers`` per source model and the target's ``target_layer``.
    ``agreement``: cross-source cosine at those source layers (label-free quality signal for the
    target); ``cka``: the target layer's mean anchor CKA with the sources at their layers."""

    axis: str
    source_layers: dict[str, int]
    target_layer: int
    agreement: float
    cka: float
    rule: str


def _cka_table(target_anchors: dict[int, np.ndarray], kernels: list[np.ndarray]) -> dict[int, float]:
    table = {}
    for layer, acts in sorted(target_anchors.items()):
        gram = AnchorSpace().fit(acts).gram()
        table[layer] = float(np.mean([linear_cka(gram, k) for k in kernels]))
    return table


def map_to_target(sources: list[ModelActivations], source_layers: dict[str, int],
                  target_anchors: dict[int, np.ndarray], target_num_layers: int, rule: str = "depth_cka") -> tuple[int, float]:
    """Target layer (and its CKA) for sources read at ``source_layers``; anchors only."""
    if rule not in RULES:
        raise ValueError(f"unknown layer rule {rule!r}; choose one of {', '.join(RULES)}")
    kernels = [AnchorSpace().fit(s.anchors[source_layers[s.info.name]]).gram() for s in sources]
    cka = _cka_table(target_anchors, kernels)
    depth = float(np.mean([relative_depth(source_layers[s.info.name], s.info.num_layers) for s in sources]))
    distance = {layer: abs(relative_depth(layer, target_num_layers) - depth) for layer in target_anchors}
    if rule == "cka":
        best = max(cka, key=lambda layer: cka[layer])
    elif rule == "depth":
        best = min(distance, key=lambda layer: distance[layer])
    else:
        near = [layer for layer in target_anchors if distance[layer] <= DEPTH_WINDOW] or [min(distance, key=lambda layer: distance[layer])]
        best = max(near, key=lambda layer: cka[layer])
    return int(best), cka[best]


def choose_axis_layers(sources: list[ModelActivations], target_anchors: dict[int, np.ndarray], target_num_layers: int,
                       axes: list[str], rule: str = "depth_cka", top: int = 1,
                       read_depths: dict[str, float] | None = None) -> dict[str, list[AxisLayers]]:
    """Per axis, the ``top`` best (source layers, target layer) choices, best first. No target labels.
    An axis in ``read_depths`` is read at every model's layer nearest that depth (one choice)."""
    out: dict[str, list[AxisLayers]] = {}
    names = [s.info.name for s in sources]
    for axis in axes:
        depth = (read_depths or {}).get(axis)
        if depth is not None:
            # The agreement at the fixed layers directly, not a grid search over every layer combination.
            canon = per_axis_canonical(sources, [axis], {axis: depth})
            fixed = dict(zip(names, canon.source_layers[0], strict=True))
            target = nearest_layer(list(target_anchors), target_num_layers, depth)
            out[axis] = [AxisLayers(axis, fixed, target, float(canon.agreement[0]),
                                    _cka_table({target: target_anchors[target]}, list(canon.kernels[0]))[target], "read_depth")]
            continue
        choice = choose_source_layers(sources, [axis])
        ranked: list[str | None] = [*sorted(choice.table, key=lambda k: choice.table[k], reverse=True)] or [None]
        picks = []
        for key in ranked[:top]:
            layers = choice.layers if key is None else dict(zip(names, map(int, key.split(",")), strict=True))
            target_layer, cka = map_to_target(sources, layers, target_anchors, target_num_layers, rule)
            agreement = choice.score if key is None else choice.table[key]
            picks.append(AxisLayers(axis, layers, target_layer, float(agreement), cka, rule))
        out[axis] = picks
    return out
