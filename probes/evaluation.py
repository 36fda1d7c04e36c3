"""Leave-one-family-out evaluation: each model in turn is the target, the others are sources.

Rule kept here: only ``native_axis`` touches the target's labels or axis data (it is the ceiling,
for reference). Every other method sees the target's anchor activations and the unlabeled test
prompts being scored, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from guard.anchor_space import AnchorSpace, unit_rows
from guard.axes import AxisSpec
from guard.reconstruction import reconstruct
from guard.scoring import AnchorZScorer
from probes.acs_probe import fit_binary, fit_multiclass
from probes.activations import ModelActivations
from probes.axis_layers import choose_axis_target_layers
from probes.calibration import build_bundle, choose_layer
from probes.directions import native_directions
from probes.operating_points import DEFAULT_FPRS, auroc, operating_points

__all__ = ["auroc", "evaluate_lofo", "evaluate_target"]  # auroc: re-exported for older callers

AXIS_METHODS = ("reconstructed_axis", "reconstructed_axis_per_axis_layer", "reconstructed_axis_adjoint",
                "native_axis", "random_axis")


@dataclass
class ScoredTest:
    """Scores of one target's test prompts: ``pos``/``neg`` [n_axis_prompts, K] per axis."""

    pos: dict[str, np.ndarray]
    neg: dict[str, np.ndarray]


def _axis_scores(target: ModelActivations, layer: int, vectors: np.ndarray, axes: list[str]) -> ScoredTest:
    score = AnchorZScorer(vectors).fit(target.anchors[layer]).transform

    return ScoredTest({a: score(target.test_pos[a][layer]) for a in axes}, {a: score(target.test_neg[a][layer]) for a in axes})


def _detection(pos: dict[str, np.ndarray], neg: dict[str, np.ndarray], axes: list[str]) -> dict:
    """Per axis: AUROC and TPR at 1 % / 5 % FPR with bootstrap 95 % intervals, from 1-d scores; the
    row fields ``auroc``, ``mean_auroc``, ``tpr_at_fpr`` and ``mean_tpr_at_fpr``."""
    aurocs = {a: auroc(pos[a], neg[a]) for a in axes}
    tpr = {a: {str(p.fpr): {"tpr": p.tpr, "low": p.low, "high": p.high}
               for p in operating_points(pos[a], neg[a])} for a in axes}
    return {"auroc": aurocs, "mean_auroc": float(np.mean(list(aurocs.values()))), "tpr_at_fpr": tpr,
            "mean_tpr_at_fpr": {str(f): float(np.mean([tpr[a][str(f)]["tpr"] for a in axes])) for f in DEFAULT_FPRS}}


def _axis_detection(scored: ScoredTest, axes: list[str]) -> dict:
    return _detection({a: scored.pos[a][:, k] for k, a in enumerate(axes)},
                      {a: scored.neg[a][:, k] for k, a in enumerate(axes)}, axes)


def _multiclass_accuracy(scored: ScoredTest, axes: list[str]) -> float | None:
    """K-way: which axis does each positive test prompt belong to? Argmax of per-axis scores after
    standardising each axis' score over all unlabeled test prompts (label-free normalisation).
    None with fewer than two axes (there is nothing to tell apart)."""
    if len(axes) < MIN_MULTICLASS_AXES:
        return None
    everything = np.concatenate([scored.pos[a] for a in axes] + [scored.neg[a] for a in axes])
    mu, sd = everything.mean(axis=0), np.maximum(everything.std(axis=0), 1e-9)
    correct = total = 0
    for k, a in enumerate(axes):
        pred = np.argmax((scored.pos[a] - mu) / sd, axis=1)
        correct += int(np.sum(pred == k))
        total += len(pred)
    return correct / max(total, 1)


def _probe_results(bundle, target: ModelActivations, layer: int, axes: list[str]) -> tuple[dict, float | None]:
    space = AnchorSpace(standardise=True).fit(target.anchors[layer])
    pos, neg = {}, {}
    for k, a in enumerate(axes):
        pos[a] = space.transform(target.test_pos[a][layer]) @ bundle.probe_coef[k] + bundle.probe_intercept[k]
        neg[a] = space.transform(target.test_neg[a][layer]) @ bundle.probe_coef[k] + bundle.probe_intercept[k]
    correct = total = 0
    if bundle.multiclass_coef is not None:
        for k, a in enumerate(axes):
            decision = space.transform(target.test_pos[a][layer]) @ bundle.multiclass_coef.T + bundle.multiclass_intercept
            correct += int(np.sum(decision.argmax(axis=1) == k))
            total += len(decision)
    return _detection(pos, neg, axes), correct / total if total else None


# The K-way ("which axis?") accuracy needs two axes at least; with one it is skipped (None).
MIN_MULTICLASS_AXES = 2

# Stronger regularisation than the paper's default C=1: the 300 ACS coordinates are highly correlated.
TRANSDUCTIVE_C = 0.05


def _pool_standardised(space: AnchorSpace, pool: np.ndarray):
    """ACS coordinates standardised by the statistics of an unlabeled prompt pool (label-free)."""
    coords = space.transform(pool)
    mu, sd = coords.mean(axis=0), np.maximum(coords.std(axis=0), 1e-9)
    return lambda acts: (space.transform(acts) - mu) / sd


def _transductive_probe(sources: list[ModelActivations], source_layers: dict[str, int], target: ModelActivations,
                        layer: int, axes: list[str]) -> tuple[dict, float | None]:
    """The paper's ACS probe with each model's coordinates standardised over its own unlabeled prompts
    (sources: calibration prompts; target: the test prompts being scored), which removes per-model
    offsets and scales of the ACS coordinates. Uses no target label."""
    xs, ys, sides = [], [], []
    for s in sources:
        sl = source_layers[s.info.name]
        pool = np.concatenate([s.pos[a][sl] for a in axes] + [s.neg[a][sl] for a in axes])
        std = _pool_standardised(AnchorSpace().fit(s.anchors[sl]), pool)
        for k, a in enumerate(axes):
            for side, acts in ((1, s.pos[a][sl]), (0, s.neg[a][sl])):
                xs.append(std(acts))
                ys.append(np.full(len(acts), k))
                sides.append(np.full(len(acts), side))
    x, y, side = np.concatenate(xs), np.concatenate(ys), np.concatenate(sides)
    pool_t = np.concatenate([target.test_pos[a][layer] for a in axes] + [target.test_neg[a][layer] for a in axes])
    std_t = _pool_standardised(AnchorSpace().fit(target.anchors[layer]), pool_t)
    pos = {a: std_t(target.test_pos[a][layer]) for a in axes}
    neg = {a: std_t(target.test_neg[a][layer]) for a in axes}
    dp, dn = {}, {}
    for k, a in enumerate(axes):
        probe = fit_binary(x[y == k], side[y == k], c=TRANSDUCTIVE_C)
        dp[a], dn[a] = probe.decision(pos[a])[:, 0], probe.decision(neg[a])[:, 0]
    if len(axes) < MIN_MULTICLASS_AXES:  # a K-way probe needs two classes at least
        return _detection(dp, dn, axes), None
    multi = fit_multiclass(x[side == 1], y[side == 1], c=TRANSDUCTIVE_C)
    correct = sum(int(np.sum(multi.decision(pos[a]).argmax(axis=1) == k)) for k, a in enumerate(axes))
    return _detection(dp, dn, axes), correct / sum(len(pos[a]) for a in axes)


def _per_axis_layer_scores(sources: list[ModelActivations], target: ModelActivations, axes: list[AxisSpec],
                           anchors_sha256: str, names: list[str]) -> tuple[ScoredTest, np.ndarray, dict[str, int]]:
    """The reconstructed axes with each axis at its own label-free layer (``probes.axis_layers``):
    test scores [n, K] (column k read at axis k's layer), the vectors and the layers."""
    bundle = build_bundle(sources, axes, anchors_sha256, per_axis_layers=True)
    picks = choose_axis_target_layers(bundle, target.anchors, target.info.num_layers)
    pos = {a: np.zeros((len(target.test_pos[a][picks[0].layer]), len(names))) for a in names}
    neg = {a: np.zeros((len(target.test_neg[a][picks[0].layer]), len(names))) for a in names}
    vectors = []
    for k, pick in enumerate(picks):
        vec = reconstruct(AnchorSpace().fit(target.anchors[pick.layer]), bundle.acs_axes[k:k + 1], "ridge").vectors
        vectors.append(vec[0])
        score = AnchorZScorer(vec).fit(target.anchors[pick.layer]).transform
        for a in names:
            pos[a][:, k] = score(target.test_pos[a][pick.layer])[:, 0]
            neg[a][:, k] = score(target.test_neg[a][pick.layer])[:, 0]
    return ScoredTest(pos, neg), np.stack(vectors), {p.axis: p.layer for p in picks}


def evaluate_target(
    target: ModelActivations, sources: list[ModelActivations], axes: list[AxisSpec], anchors_sha256: str, seed: int = 0
) -> tuple[list[dict], dict]:
    names = [a.name for a in axes]
    bundle = build_bundle(sources, axes, anchors_sha256)
    layer, why = choose_layer(bundle, target.anchors)
    space = AnchorSpace().fit(target.anchors[layer])
    native = native_directions({a: target.pos[a][layer] for a in names}, {a: target.neg[a][layer] for a in names}, names)
    rng = np.random.default_rng(seed)
    per_axis_scored, per_axis_vectors, axis_layers = _per_axis_layer_scores(sources, target, axes, anchors_sha256, names)
    vectors = {
        "reconstructed_axis": reconstruct(space, bundle.acs_axes, "ridge").vectors,
        "reconstructed_axis_per_axis_layer": per_axis_vectors,
        "reconstructed_axis_adjoint": reconstruct(space, bundle.acs_axes, "adjoint").vectors,
        "native_axis": native,
        "random_axis": unit_rows(rng.normal(size=native.shape)),
    }
    src_names = [s.info.name for s in sources]
    rows = []
    scored_by_method = {}
    for method, vec in vectors.items():
        per_axis = method == "reconstructed_axis_per_axis_layer"
        scored = per_axis_scored if per_axis else _axis_scores(target, layer, vec, names)
        scored_by_method[method] = scored
        # fidelity vs the native direction at the shared layer (undefined across layers for per-axis)
        fidelity = {} if per_axis else dict(zip(names, map(float, np.sum(unit_rows(vec) * native, axis=1)), strict=True))
        rows.append({
            "target": target.info.name, "sources": src_names, "method": method,
            "layer": axis_layers if per_axis else layer,
            "multiclass_accuracy": _multiclass_accuracy(scored, names), **_axis_detection(scored, names),
            "fidelity": fidelity,
        })
    detection, acc = _probe_results(bundle, target, layer, names)
    rows.insert(0, {
        "target": target.info.name, "sources": src_names, "method": "acs_probe", "layer": layer,
        "multiclass_accuracy": acc, **detection, "fidelity": rows[0]["fidelity"],
    })
    detection, acc = _transductive_probe(sources, {s.name: s.layer for s in bundle.sources}, target, layer, names)
    rows.insert(1, {
        "target": target.info.name, "sources": src_names, "method": "acs_probe_transductive", "layer": layer,
        "multiclass_accuracy": acc, **detection, "fidelity": rows[0]["fidelity"],
    })
    detail = {
        "target": target.info.name,
        "layer": layer,
        "layer_choice": why,
        "axis_layers": axis_layers,
        "source_layers": {s.name: s.layer for s in bundle.sources},
        "scores": scored_by_method,
        "bundle": bundle,
    }
    return rows, detail


def evaluate_lofo(models: list[ModelActivations], axes: list[AxisSpec], anchors_sha256: str, seed: int = 0) -> tuple[dict, list[dict]]:
    """Leave-one-family-out over ``models``; returns (results.json dict, per-target details)."""
    results, details = [], []
    for i, target in enumerate(models):
        rows, detail = evaluate_target(target, models[:i] + models[i + 1:], axes, anchors_sha256, seed)
        results.extend(rows)
        details.append(detail)
    layers = {d["target"]: d["layer"] for d in details}
    axis_layers = {d["target"]: d["axis_layers"] for d in details}
    return {
        "protocol": "leave-one-family-out",
        "axes": [a.name for a in axes],
        "layers": layers,
        "axis_layers": axis_layers,
        "source_layers": {d["target"]: d["source_layers"] for d in details},
        "layer_choice": {d["target"]: d["layer_choice"] for d in details},
        "results": results,
    }, details
