"""Calibration (sources -> canonical bundle) and adaptation (bundle + target anchors -> axis pack).

Pure numpy on ``ModelActivations``; the CLI fills those through an engine. ``adapt`` reads only
the target's anchor activations: no labels, no axis data of the target.
"""

from __future__ import annotations

import numpy as np

from guard.anchor_space import AnchorSpace
from guard.axes import AxisSpec
from guard.bundle import CanonicalBundle
from guard.canonical import canonical_axes
from guard.errors import AxisguardError, MismatchError
from guard.model_info import ModelInfo
from guard.pack import AxisPack
from guard.reconstruction import reconstruct
from guard.scoring import AnchorZScorer
from probes.acs_probe import fit_binary, fit_multiclass
from probes.activations import ModelActivations
from probes.axis_layers import choose_axis_target_layers, per_axis_canonical
from probes.directions import native_directions
from probes.layer_choice import choose_source_layers, choose_target_layer


def _z(acts: np.ndarray, anchors: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    return AnchorZScorer(vectors).fit(anchors).transform(acts)


def source_priors(source: ModelActivations, layer: int, acs_axes: np.ndarray, names: list[str],
                  method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label-free priors in z units, measured the way a target will score: the source reconstructs
    the canonical axes [K, N] from its own anchors at ``layer``, then scores its own calibration
    prompts. Returns mean positive z, mean negative z and the cosine to its native direction [K]."""
    anchors = source.anchors[layer]
    rec = reconstruct(AnchorSpace().fit(anchors), acs_axes, method)
    dirs = native_directions({a: source.pos[a][layer] for a in names}, {a: source.neg[a][layer] for a in names}, names)
    pos_z = np.array([_z(source.pos[a][layer], anchors, rec.vectors)[:, k].mean() for k, a in enumerate(names)])
    neg_z = np.array([_z(source.neg[a][layer], anchors, rec.vectors)[:, k].mean() for k, a in enumerate(names)])
    return pos_z, neg_z, np.sum(rec.vectors * dirs, axis=1)


def build_bundle(
    sources: list[ModelActivations],
    axes: list[AxisSpec],
    anchors_sha256: str,
    layers: dict[str, int] | None = None,
    method: str = "ridge",
    per_axis_layers: bool = False,
) -> CanonicalBundle:
    """Canonical axes, ACS probes and label-free priors from two or more source models.

    ``per_axis_layers``: each axis' canonical direction and priors come from the source layers where
    the sources agree on that axis most (``probes.axis_layers``); the ACS probes stay at the shared
    layers."""
    names = [a.name for a in axes]
    if len(sources) < 1:
        raise AxisguardError("calibration needs at least one source model", "pass --source twice or more")
    counts = {s.info.name: next(iter(s.anchors.values())).shape[0] for s in sources}
    if len(set(counts.values())) != 1:
        raise MismatchError(f"sources ran different numbers of anchors: {counts}", "extract all sources on one anchor pool")
    choice = choose_source_layers(sources, names) if layers is None else None
    chosen = layers if layers is not None else choice.layers  # type: ignore[union-attr]  # choice set when layers is None
    projected, coords, labels, kernels, pos_z, neg_z, self_fidelity = [], [], [], [], [], [], []
    for source in sources:
        layer = chosen[source.info.name]
        anchors = source.anchors[layer]
        space = AnchorSpace().fit(anchors)
        dirs = native_directions({a: source.pos[a][layer] for a in names}, {a: source.neg[a][layer] for a in names}, names)
        projected.append(space.project_direction(dirs))
        kernels.append(space.gram())
        probe_space = AnchorSpace(standardise=True).fit(anchors)
        for k, a in enumerate(names):
            coords.append(probe_space.transform(source.pos[a][layer]))
            labels.append(np.full(len(source.pos[a][layer]), k))
            coords.append(probe_space.transform(source.neg[a][layer]))
            labels.append(np.full(len(source.neg[a][layer]), -1 - k))
    canon = canonical_axes(projected)
    for source in sources:
        pz, nz, fid = source_priors(source, chosen[source.info.name], canon.axes, names, method)
        pos_z.append(pz)
        neg_z.append(nz)
        self_fidelity.append(fid)
    canon_axes, agreement = canon.axes, canon.agreement
    depths = {a.name: a.read_depth for a in axes if a.read_depth is not None}
    per_axis = per_axis_canonical(sources, names, depths) if per_axis_layers else None
    if per_axis is not None:
        canon_axes, agreement = per_axis.axes, per_axis.agreement
        for k, axis in enumerate(names):
            for s, source in enumerate(sources):
                pz, nz, fid = source_priors(source, per_axis.source_layers[k][s], canon_axes[k:k + 1], [axis], method)
                pos_z[s][k], neg_z[s][k], self_fidelity[s][k] = pz[0], nz[0], fid[0]
    x = np.concatenate(coords)
    y = np.concatenate(labels)
    binary = [fit_binary(x[(y == k) | (y == -1 - k)], (y[(y == k) | (y == -1 - k)] == k).astype(int)) for k in range(len(names))]
    multi = fit_multiclass(x[y >= 0], y[y >= 0]) if len(names) > 1 else None
    diagnostics = {
        "source_agreement": dict(zip(names, map(float, agreement), strict=True)),
        "source_self_fidelity": dict(zip(names, map(float, np.mean(self_fidelity, axis=0)), strict=True)),
        "layer_choice": {"layers": chosen, "reason": choice.reason if choice else "given", "table": choice.table if choice else {}},
        "reconstruction_method_for_priors": method,
    }
    return CanonicalBundle(
        axes=axes,
        acs_axes=canon_axes,
        anchors_sha256=anchors_sha256,
        anchor_count=int(next(iter(counts.values()))),
        sources=[
            s.info.at_layer(chosen[s.info.name])
            for s in sources
        ],
        probe_coef=np.concatenate([p.coef for p in binary]),
        probe_intercept=np.concatenate([p.intercept for p in binary]),
        multiclass_coef=multi.coef if multi else None,
        multiclass_intercept=multi.intercept if multi else None,
        anchor_kernels=np.stack(kernels),
        pos_mean_z=np.mean(pos_z, axis=0),
        neg_mean_z=np.mean(neg_z, axis=0),
        diagnostics=diagnostics,
        axis_source_layers=per_axis.source_layers if per_axis is not None else None,
        axis_anchor_kernels=per_axis.kernels if per_axis is not None else None,
    )


def choose_layer(bundle: CanonicalBundle, target_anchors: dict[int, np.ndarray]) -> tuple[int, dict]:
    if bundle.anchor_kernels is None:
        layers = sorted(target_anchors)
        return layers[len(layers) // 2], {"reason": "bundle has no anchor kernels: middle candidate layer"}
    choice = choose_target_layer(target_anchors, bundle.anchor_kernels)
    return choice.layers["target"], {"reason": choice.reason, "table": choice.table}


def adapt_pack(
    bundle: CanonicalBundle,
    target_anchors: dict[int, np.ndarray],
    info: ModelInfo | None = None,
    method: str = "ridge",
    layer: int | None = None,
    bundle_sha256: str = "",
    anchors_sha256: str | None = None,
) -> AxisPack:
    """Reconstruct the bundle's axes for a target from its anchor activations (per candidate layer)."""
    if anchors_sha256 is not None and anchors_sha256 != bundle.anchors_sha256:
        raise MismatchError(
            "the target's anchors differ from the bundle's anchor pool (sha256 mismatch)",
            "extract the target on the same anchors the bundle was calibrated with (same --data directory)",
        )
    n = next(iter(target_anchors.values())).shape[0]
    if n != bundle.anchor_count:
        raise MismatchError(f"the target ran {n} anchors, the bundle expects {bundle.anchor_count}", "use the bundle's anchor pool")
    per_axis = layer is None and bundle.axis_source_layers is not None
    if layer is None:
        layer, why = choose_layer(bundle, target_anchors)
    else:
        if layer not in target_anchors:
            raise AxisguardError(f"no anchor activations at layer {layer}", f"available: {sorted(target_anchors)}")
        why = {"reason": "given"}
    anchors = target_anchors[layer]
    model = (info or ModelInfo("unknown", "", anchors.shape[1], 0)).at_layer(layer)
    axis_layers = [layer] * len(bundle.axes)
    if per_axis:
        picks = choose_axis_target_layers(bundle, target_anchors, model.num_layers or max(target_anchors) + 1)
        axis_layers = [p.layer for p in picks]
        why["per_axis"] = {p.axis: {"layer": p.layer, "source_depth": round(p.source_depth, 3), "cka": round(p.cka, 4)}
                           for p in picks}
        why["reason"] += "; per axis: the target layer near the sources' relative depth with the highest anchor CKA"
    vectors, offset, scale, means, fidelity, lam = [], [], [], [], [], []
    for k, at in enumerate(axis_layers):  # one reconstruction per axis, at the axis' layer
        rec = reconstruct(AnchorSpace().fit(target_anchors[at]), bundle.acs_axes[k:k + 1], method)
        scorer = AnchorZScorer(rec.vectors).fit(target_anchors[at])
        vectors.append(rec.vectors[0])
        offset.append(scorer.offset_[0])
        scale.append(scorer.scale_[0])
        means.append(scorer.mean_)
        fidelity.append(rec.fidelity[0])
        lam.append(rec.lam[0])
    model = model.at_layer(axis_layers[0]) if per_axis else model
    rec_vectors = np.stack(vectors)
    names = bundle.axis_names
    return AxisPack(
        model=model,
        axes=bundle.axes,
        vectors=rec_vectors.astype(np.float32),
        anchor_mean=np.asarray(means[0], np.float32),
        score_offset=np.asarray(offset, np.float32),
        score_scale=np.asarray(scale, np.float32),
        pos_mean_z=np.asarray(bundle.pos_mean_z if bundle.pos_mean_z is not None else np.ones(len(names)), np.float32),
        neg_mean_z=np.asarray(bundle.neg_mean_z if bundle.neg_mean_z is not None else -np.ones(len(names)), np.float32),
        method=method,
        anchors_sha256=bundle.anchors_sha256,
        bundle_sha256=bundle_sha256,
        sources=[s.name for s in bundle.sources],
        diagnostics={
            "layer_choice": {"layer": layer, **why},
            "fidelity_back_projection": dict(zip(names, map(float, fidelity), strict=True)),
            "ridge_lambda": dict(zip(names, map(float, lam), strict=True)),
            "source_agreement": bundle.diagnostics.get("source_agreement", {}),
        },
        axis_layers=axis_layers,
        axis_anchor_mean=np.stack(means).astype(np.float32),
    )
