"""Leave-one-family-out scoring of prompt sets nobody labelled for the target: external harmful
requests vs our look-alikes, and the catalogue's own test pairs, at one shared layer and at
per-axis layers.

Per held-out target (the other models are the sources):

- ``native``: the target's own diff-of-means direction from the catalogue's calibration pairs (its
  labels: the ceiling the label-free methods aim at);
- ``reconstructed``: the bundle -> adapt pipeline (canonical ACS axis from the sources, ridge
  reconstruction from the target's anchors alone);
- ``acs_probe``: the sources' logistic probe on standardised ACS coordinates.

Each is read at the one layer ``adapt`` picks (``one_layer``) and at the axis' own layer
(``per_axis``, ``probes.layer_selection``); ``per_axis_top3`` averages the reconstructed z-scores
of the three best per-axis layer choices. No method sees an external label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from guard.anchor_space import AnchorSpace
from guard.axes import AxisSpec
from guard.reconstruction import reconstruct
from guard.scoring import anchor_score_stats, z_scores
from probes.activations import ModelActivations
from probes.calibration import build_bundle, choose_layer
from probes.directions import native_direction
from probes.layer_selection import AxisLayers, choose_axis_layers
from probes.length_control import length_matched, length_only
from probes.operating_points import auroc, auroc_interval, operating_points

METHODS = ("native", "reconstructed", "acs_probe")


@dataclass
class PromptSet:
    """Activations of a scored set on one model: ``pos``/``neg`` {layer: [n, d]}; optionally each
    prompt's token count (``pos_len``/``neg_len``), for the length baseline and length-matched AUROC."""

    name: str
    axis: str
    pos: dict[int, np.ndarray]
    neg: dict[int, np.ndarray]
    pos_len: np.ndarray | None = None
    neg_len: np.ndarray | None = None


@dataclass
class Scorer:
    """One way of scoring one axis on one target: z-scores (anchor units) of activations."""

    method: str
    layers: list[int]
    vectors: list[np.ndarray]  # per layer, [d] (native/reconstructed) or ACS probe coef [N]
    intercepts: list[float] = field(default_factory=list)

    def __call__(self, target: ModelActivations, acts: dict[int, np.ndarray]) -> np.ndarray:
        scores = []
        for i, layer in enumerate(self.layers):
            anchors = target.anchors[layer]
            if self.method == "acs_probe":
                space = AnchorSpace(standardise=True).fit(anchors)
                scores.append(space.transform(acts[layer]) @ self.vectors[i] + self.intercepts[i])
                continue
            vec = self.vectors[i][None, :]
            offset, scale = anchor_score_stats(anchors, vec)
            scores.append(z_scores(acts[layer].astype(np.float64), anchors.mean(axis=0), vec, offset, scale)[:, 0])
        return np.mean(scores, axis=0)


def _probe_scorer(bundle, layer: int) -> Scorer:
    assert bundle.probe_coef is not None and bundle.probe_intercept is not None  # build_bundle fits the probe
    return Scorer("acs_probe", [layer], [bundle.probe_coef[0]], [float(bundle.probe_intercept[0])])


def _scorers_at(target: ModelActivations, sources: list[ModelActivations], spec: AxisSpec, anchors_sha256: str,
                source_layers: dict[str, int], layer: int) -> dict[str, Scorer]:
    bundle = build_bundle(sources, [spec], anchors_sha256, layers=source_layers)
    rec = reconstruct(AnchorSpace().fit(target.anchors[layer]), bundle.acs_axes, "ridge").vectors[0]
    native = native_direction(target.pos[spec.name][layer], target.neg[spec.name][layer])
    return {
        "native": Scorer("native", [layer], [native]),
        "reconstructed": Scorer("reconstructed", [layer], [rec]),
        "acs_probe": _probe_scorer(bundle, layer),
    }


def axis_scorers(target: ModelActivations, sources: list[ModelActivations], specs: list[AxisSpec],
                 anchors_sha256: str, only: set[str] | None = None) -> tuple[dict[str, dict[str, Scorer]], dict]:
    """{axis: {variant/method: Scorer}} for one held-out target (axes in ``only``, default all), and
    the layers chosen (label-free). The shared layer still comes from all ``specs``, as in ``adapt``."""
    shared = build_bundle(sources, specs, anchors_sha256)
    specs = [s for s in specs if only is None or s.name in only]
    names = [s.name for s in specs]
    one_layer, _ = choose_layer(shared, target.anchors)
    shared_sources = {s.name: s.layer for s in shared.sources}
    depths = {s.name: s.read_depth for s in specs if s.read_depth is not None}
    per_axis = choose_axis_layers(sources, target.anchors, target.info.num_layers, names, top=3, read_depths=depths)
    out: dict[str, dict[str, Scorer]] = {}
    for spec in specs:
        picks: list[AxisLayers] = per_axis[spec.name]
        scorers = {f"one_layer/{m}": s for m, s in
                   _scorers_at(target, sources, spec, anchors_sha256, shared_sources, one_layer).items()}
        scorers.update({f"per_axis/{m}": s for m, s in
                        _scorers_at(target, sources, spec, anchors_sha256, picks[0].source_layers, picks[0].target_layer).items()})
        recs = [_scorers_at(target, sources, spec, anchors_sha256, p.source_layers, p.target_layer)["reconstructed"]
                for p in picks]
        scorers["per_axis_top3/reconstructed"] = Scorer("reconstructed", [r.layers[0] for r in recs], [r.vectors[0] for r in recs])
        out[spec.name] = scorers
    layers = {"one_layer": one_layer, "one_layer_sources": shared_sources,
              "per_axis": {a: [{"sources": p.source_layers, "target": p.target_layer, "agreement": round(p.agreement, 4),
                                "cka": round(p.cka, 4)} for p in per_axis[a]] for a in names}}
    return out, layers


def score_set(scorer: Scorer, target: ModelActivations, prompts: PromptSet, with_points: bool = True) -> dict:
    """AUROC (with bootstrap interval) and TPR at 1 % / 5 % FPR of one scorer on one set."""
    pos, neg = scorer(target, prompts.pos), scorer(target, prompts.neg)
    row: dict = {"auroc": round(auroc(pos, neg), 4), "n_pos": len(pos), "n_neg": len(neg)}
    if with_points:
        row["auroc_ci"] = [round(x, 4) for x in auroc_interval(pos, neg)]
        row["tpr_at_fpr"] = [p.as_dict() for p in operating_points(pos, neg)]
    if prompts.pos_len is not None and prompts.neg_len is not None:
        row["length_matched"] = length_matched(pos, neg, prompts.pos_len, prompts.neg_len)
    return row


def native_by_layer(target: ModelActivations, axis: str, prompts: PromptSet) -> dict[int, float]:
    """Diagnostic (uses the target's catalogue labels, never the set's): native AUROC at every layer."""
    out = {}
    for layer in target.layers:
        scorer = Scorer("native", [layer], [native_direction(target.pos[axis][layer], target.neg[axis][layer])])
        out[layer] = round(auroc(scorer(target, prompts.pos), scorer(target, prompts.neg)), 4)
    return out


def internal_set(target: ModelActivations, axis: str) -> PromptSet:
    """The catalogue's test pairs of ``axis`` as a prompt set."""
    return PromptSet(f"{axis}_internal_test", axis, target.test_pos[axis], target.test_neg[axis])


def evaluate_external(models: list[ModelActivations], external: dict[str, list[PromptSet]], specs: list[AxisSpec],
                      anchors_sha256: str, internal_points: bool = False) -> dict:
    """Leave-one-family-out over ``models``; ``external[model name]`` holds that model's activations of
    the external sets (models missing there only serve as sources). Returns a JSON-ready dict: per target, the chosen layers and, per set and
    scorer, AUROC / intervals / TPR at FPR."""
    results = {}
    for i, target in enumerate(models):
        if target.info.name not in external:  # scored only as a source in this run
            continue
        sources = models[:i] + models[i + 1:]
        needed = {p.axis for p in external[target.info.name]} | set(target.test_pos)
        scorers, layers = axis_scorers(target, sources, specs, anchors_sha256, needed)
        sets: dict[str, dict] = {}
        for prompts in external[target.info.name]:
            sets[prompts.name] = {"axis": prompts.axis,
                                  "scores": {k: score_set(s, target, prompts) for k, s in scorers[prompts.axis].items()},
                                  "native_by_layer": native_by_layer(target, prompts.axis, prompts)}
            if prompts.pos_len is not None and prompts.neg_len is not None:  # the trivial baseline to beat
                sets[prompts.name]["length_only"] = length_only(prompts.pos_len, prompts.neg_len)
        for spec in specs:
            if spec.name not in target.test_pos or spec.name not in scorers:  # no test split loaded for this axis
                continue
            prompts = internal_set(target, spec.name)
            sets[prompts.name] = {"axis": spec.name,
                                  "scores": {k: score_set(s, target, prompts, internal_points) for k, s in scorers[spec.name].items()}}
        results[target.info.name] = {"sources": [s.info.name for s in sources], "layers": layers, "sets": sets}
    return results
