"""Leave-one-family-out evaluation: each model in turn is the target, the others are sources.

Rule kept here: only ``native_axis`` touches the target's labels or axis data (it is the ceiling,
for reference). Every other method sees the target's anchor activations and the unlabeled test
prompts being scored, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from guard.anchor_space import AnchorSpace, unit_rows
from guard.axes import AxisSpec
from guard.reconstruction import reconstruct
from guard.scoring import AnchorZScorer
from probes.acs_probe import fit_binary, fit_multiclass
from probes.activations import ModelActivations
from probes.calibration import build_bundle, choose_layer
from probes.directions import native_directions

AXIS_METHODS = ("reconstructed_axis", "reconstructed_axis_adjoint", "native_axis", "random_axis")


@dataclass
class ScoredTest:
    """Scores of one target's test prompts: ``pos``/``neg`` [n_axis_prompts, K] per axis."""

    pos: dict[str, np.ndarray]
    neg: dict[str, np.ndarray]


def _axis_scores(target: ModelActivations, layer: int, vectors: np.ndarray, axes: list[str]) -> ScoredTest:
    score = AnchorZScorer(vectors).fit(target.anchors[layer]).transform

    return ScoredTest({a: score(target.test_pos[a][layer]) for a in axes}, {a: score(target.test_neg[a][layer]) for a in axes})


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve of scores ``pos`` (label 1) against ``neg`` (label 0)."""
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def _auroc(scored: ScoredTest, axes: list[str]) -> dict[str, float]:
    out = {}
    for k, a in enumerate(axes):
        pos, neg = scored.pos[a][:, k], scored.neg[a][:, k]
        out[a] = auroc(pos, neg)
    return out


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


def _probe_results(bundle, target: ModelActivations, layer: int, axes: list[str]) -> tuple[dict[str, float], float | None]:
    space = AnchorSpace(standardise=True).fit(target.anchors[layer])
    auroc_by_axis = {}
    for k, a in enumerate(axes):
        pos = space.transform(target.test_pos[a][layer]) @ bundle.probe_coef[k] + bundle.probe_intercept[k]
        neg = space.transform(target.test_neg[a][layer]) @ bundle.probe_coef[k] + bundle.probe_intercept[k]
        auroc_by_axis[a] = auroc(pos, neg)
    correct = total = 0
    if bundle.multiclass_coef is not None:
        for k, a in enumerate(axes):
            decision = space.transform(target.test_pos[a][layer]) @ bundle.multiclass_coef.T + bundle.multiclass_intercept
            correct += int(np.sum(decision.argmax(axis=1) == k))
            total += len(decision)
    return auroc_by_axis, correct / total if total else None


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
                        layer: int, axes: list[str]) -> tuple[dict[str, float], float | None]:
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
    auroc_by_axis = {}
    for k, a in enumerate(axes):
        probe = fit_binary(x[y == k], side[y == k], c=TRANSDUCTIVE_C)
        dp, dn = probe.decision(pos[a])[:, 0], probe.decision(neg[a])[:, 0]
        auroc_by_axis[a] = auroc(dp, dn)
    if len(axes) < MIN_MULTICLASS_AXES:  # a K-way probe needs two classes at least
        return auroc_by_axis, None
    multi = fit_multiclass(x[side == 1], y[side == 1], c=TRANSDUCTIVE_C)
    correct = sum(int(np.sum(multi.decision(pos[a]).argmax(axis=1) == k)) for k, a in enumerate(axes))
    return auroc_by_axis, correct / sum(len(pos[a]) for a in axes)


def evaluate_target(
    target: ModelActivations, sources: list[ModelActivations], axes: list[AxisSpec], anchors_sha256: str, seed: int = 0
) -> tuple[list[dict], dict]:
    names = [a.name for a in axes]
    bundle = build_bundle(sources, axes, anchors_sha256)
    layer, why = choose_layer(bundle, target.anchors)
    space = AnchorSpace().fit(target.anchors[layer])
    native = native_directions({a: target.pos[a][layer] for a in names}, {a: target.neg[a][layer] for a in names}, names)
    rng = np.random.default_rng(seed)
    vectors = {
        "reconstructed_axis": reconstruct(space, bundle.acs_axes, "ridge").vectors,
        "reconstructed_axis_adjoint": reconstruct(space, bundle.acs_axes, "adjoint").vectors,
        "native_axis": native,
        "random_axis": unit_rows(rng.normal(size=native.shape)),
    }
    src_names = [s.info.name for s in sources]
    rows = []
    scored_by_method = {}
    for method, vec in vectors.items():
        scored = _axis_scores(target, layer, vec, names)
        scored_by_method[method] = scored
        auroc = _auroc(scored, names)
        rows.append({
            "target": target.info.name, "sources": src_names, "method": method, "layer": layer,
            "multiclass_accuracy": _multiclass_accuracy(scored, names),
            "auroc": auroc, "mean_auroc": float(np.mean(list(auroc.values()))),
            "fidelity": dict(zip(names, map(float, np.sum(unit_rows(vec) * native, axis=1)), strict=True)),
        })
    auroc, acc = _probe_results(bundle, target, layer, names)
    rows.insert(0, {
        "target": target.info.name, "sources": src_names, "method": "acs_probe", "layer": layer,
        "multiclass_accuracy": acc, "auroc": auroc, "mean_auroc": float(np.mean(list(auroc.values()))),
        "fidelity": rows[0]["fidelity"],
    })
    auroc, acc = _transductive_probe(sources, {s.name: s.layer for s in bundle.sources}, target, layer, names)
    rows.insert(1, {
        "target": target.info.name, "sources": src_names, "method": "acs_probe_transductive", "layer": layer,
        "multiclass_accuracy": acc, "auroc": auroc, "mean_auroc": float(np.mean(list(auroc.values()))),
        "fidelity": rows[0]["fidelity"],
    })
    detail = {
        "target": target.info.name,
        "layer": layer,
        "layer_choice": why,
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
    return {
        "protocol": "leave-one-family-out",
        "axes": [a.name for a in axes],
        "layers": layers,
        "source_layers": {d["target"]: d["source_layers"] for d in details},
        "layer_choice": {d["target"]: d["layer_choice"] for d in details},
        "results": results,
    }, details
