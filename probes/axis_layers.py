"""Per-axis layers, chosen without target labels: each behaviour is read at its own depth.

One layer for every axis is a compromise: on Qwen2.5 the layer that suits the average axis is
where the refusal direction barely separates anything. Here, per axis:

* **sources** (calibration; sources' labels only): the per-source layers where the sources' native
  directions for *this axis* agree most in anchor coordinates (``choose_source_layers`` on that
  axis alone); the axis' canonical ACS direction and its z priors are taken there;
* **target** (adaptation; the target's anchors only): the sources' mean relative depth says where
  to look, anchor CKA checks the geometry: among the target's candidate layers within
  ``DEPTH_WINDOW`` relative depth of the sources, the one whose anchor kernel is closest (linear
  CKA) to the sources' kernels at the axis' layers.

An axis whose card fixes a ``read_depth`` skips both searches: every model, sources and target,
reads it at its candidate layer nearest that relative depth. Refusal needs this: the layers where
the sources agree most are deep, and there the refusal direction separates external harmful
requests from look-alikes worst (``bench/results/external/``, DEV split).

The external-validity work (issue #9 part 1) studies label-free layer rules on held-out data;
this module is the product mechanics the bundle and pack formats carry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from guard.anchor_space import AnchorSpace, linear_cka
from guard.bundle import CanonicalBundle
from guard.canonical import canonical_axes
from probes.activations import ModelActivations
from probes.directions import native_directions
from probes.layer_choice import choose_source_layers

DEPTH_WINDOW = 0.15  # relative depth around the sources' depth the target layer may move by


@dataclass
class PerAxisCanonical:
    """Per axis k: ``axes[k]`` [N] canonical direction at ``source_layers[k]`` (one per source),
    ``agreement[k]`` cross-source cosine there, ``kernels[k]`` [S, N, N] the sources' anchor kernels."""

    axes: np.ndarray
    agreement: np.ndarray
    source_layers: list[list[int]]
    kernels: np.ndarray


@dataclass(frozen=True)
class AxisTargetLayer:
    """The target layer of one axis and why: the sources' relative depth and the CKA there."""

    axis: str
    layer: int
    source_depth: float
    cka: float


def relative_depth(layer: int, num_layers: int) -> float:
    return layer / max(num_layers - 1, 1)


def nearest_layer(candidates: list[int], num_layers: int, depth: float) -> int:
    """The candidate layer whose relative depth is closest to ``depth`` (the shallower one on a tie)."""
    return min(sorted(candidates), key=lambda layer: abs(relative_depth(layer, num_layers) - depth))


def per_axis_canonical(sources: list[ModelActivations], names: list[str],
                       read_depths: dict[str, float] | None = None) -> PerAxisCanonical:
    """Each axis' canonical ACS direction at the source layers where the sources agree on it most,
    or, for an axis in ``read_depths``, at each source's layer nearest that relative depth."""
    axes, agreement, layers, kernels = [], [], [], []
    for axis in names:
        depth = (read_depths or {}).get(axis)
        if depth is not None:
            chosen = [nearest_layer(s.layers, s.info.num_layers, depth) for s in sources]
        else:
            choice = choose_source_layers(sources, [axis])
            chosen = [choice.layers[s.info.name] for s in sources]
        projected, grams = [], []
        for source, layer in zip(sources, chosen, strict=True):
            space = AnchorSpace().fit(source.anchors[layer])
            direction = native_directions({axis: source.pos[axis][layer]}, {axis: source.neg[axis][layer]}, [axis])
            projected.append(space.project_direction(direction))
            grams.append(space.gram())
        canon = canonical_axes(projected)
        axes.append(canon.axes[0])
        agreement.append(float(canon.agreement[0]))
        layers.append(chosen)
        kernels.append(np.stack(grams))
    return PerAxisCanonical(np.stack(axes), np.array(agreement), layers, np.stack(kernels))


def choose_axis_target_layers(bundle: CanonicalBundle, target_anchors: dict[int, np.ndarray],
                              num_layers: int) -> list[AxisTargetLayer]:
    """Every axis' target layer (``bundle`` must hold per-axis layers); anchors only, no labels."""
    assert bundle.axis_source_layers is not None and bundle.axis_anchor_kernels is not None
    grams = {layer: AnchorSpace().fit(acts).gram() for layer, acts in sorted(target_anchors.items())}
    out = []
    for k, spec in enumerate(bundle.axes):
        axis = spec.name
        if spec.read_depth is not None:  # fixed by the axis card: no search
            depth = spec.read_depth
            near = [nearest_layer(list(grams), num_layers, depth)]
        else:
            depth = float(np.mean([relative_depth(layer, s.num_layers)
                                   for layer, s in zip(bundle.axis_source_layers[k], bundle.sources, strict=True)]))
            distance = {layer: abs(relative_depth(layer, num_layers) - depth) for layer in grams}
            near = [layer for layer in grams if distance[layer] <= DEPTH_WINDOW] or [min(distance, key=distance.__getitem__)]
        cka = {layer: float(np.mean([linear_cka(grams[layer], kern) for kern in bundle.axis_anchor_kernels[k]]))
               for layer in near}
        best = max(cka, key=cka.__getitem__)
        out.append(AxisTargetLayer(axis, int(best), depth, cka[best]))
    return out
