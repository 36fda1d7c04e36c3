"""Refusal-axis variants tried on the external DEV split and dropped (issue #9; bench/results/external/README.md).

Each variant changes one ingredient of the shipped label-free axis (sources' difference of means on
the catalogue's refusal pairs, projected to anchor coordinates, averaged over the two source
families, ridge-reconstructed from the held-out target's anchors, read at 1/4 depth, scored as a
cosine) and reports AUROC of public harmful requests against our look-alikes and everyday traffic,
leave-one-family-out:

* ``estimators``: the sources' direction from the mean of unit paired differences, the median
  paired difference, shrunk LDA, or the difference of means with the pairs' shared topic
  directions (top principal components of the pair midpoints) projected out;
* ``scores``: plain dot product, cosine in anchor-standardised space, cosine with the norm taken
  without the 8 highest-variance dimensions;
* ``paper``: the paper's public refusal pairs (``--acs-data``) instead of, or pooled with, ours;
* ``kinds``: no variant, a diagnosis: the shipped axis per kind of look-alike (mean z, AUROC of the
  harmful requests against that kind), which told the catalogue's third round what to write.

    python -m scripts.refusal_variants estimators [--split dev]
    python -m scripts.refusal_variants paper --acs-data ../shared/acs-data
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np

from guard.anchor_space import AnchorSpace, unit_rows
from guard.canonical import canonical_axes
from guard.reconstruction import reconstruct
from guard.scoring import AnchorZScorer, centred_cosines
from integrations.activation_cache import ActivationCache
from integrations.activation_collection import collect_activations
from integrations.hf_extraction import extract_activations
from integrations.hf_loading import load_model
from probes.activations import ModelActivations
from probes.axis_layers import nearest_layer
from probes.catalogue import load_catalogue
from probes.external_data import SPLITS, lookalikes
from probes.operating_points import auroc
from scripts.external_validity import MODELS, external_activations, scored_sets

AXIS, DEPTH = "refusal", 0.25
Direction = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (pos [n, d], neg [n, d]) -> direction [d]


def _shrunk_inverse_times(x: np.ndarray, d: np.ndarray, shrink: float) -> np.ndarray:
    cov = x.T @ x / len(x)
    cov = (1 - shrink) * cov + shrink * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    return np.linalg.solve(cov, d)


def _topic_out(k: int) -> Direction:
    def direction(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
        d = pos.mean(0) - neg.mean(0)
        mid = (pos + neg) / 2
        top = np.linalg.svd(mid - mid.mean(0), full_matrices=False)[2][:k]
        return d - top.T @ (top @ d)
    return direction


ESTIMATORS: dict[str, Direction] = {
    "diff_of_means (shipped)": lambda p, n: p.mean(0) - n.mean(0),
    "mean_unit_pair_diffs": lambda p, n: ((p - n) / np.linalg.norm(p - n, axis=1, keepdims=True)).mean(0),
    "median_pair_diff": lambda p, n: np.median(p - n, axis=0),
    "lda_shrink_0.9": lambda p, n: _shrunk_inverse_times(np.concatenate([p - p.mean(0), n - n.mean(0)]),
                                                         p.mean(0) - n.mean(0), 0.9),
    "topic_out_3": _topic_out(3),
}


def _score_functions(anchors: np.ndarray) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    mean, sd = anchors.mean(0), anchors.std(0) + 1e-6
    keep = np.argsort(sd)[:-8]
    return {
        "cosine (shipped)": lambda x, v: centred_cosines(x, mean, v[None])[:, 0],
        "dot": lambda x, v: (x - mean) @ v,
        "standardised_cosine": lambda x, v: (x - mean) @ v / np.linalg.norm((x - mean) / sd, axis=1),
        "cosine_without_top8_var": lambda x, v: (x - mean) @ v / np.linalg.norm((x - mean)[:, keep], axis=1),
    }


def _layer(acts: ModelActivations) -> int:
    return nearest_layer(acts.layers, acts.info.num_layers, DEPTH)


def _reconstructed(target: ModelActivations, sources: list[ModelActivations],
                   directions: dict[str, np.ndarray]) -> np.ndarray:
    """The canonical axis of the sources' native ``directions`` {model: [d]}, rebuilt in the target."""
    projected = [AnchorSpace().fit(s.anchors[_layer(s)].astype(np.float64)).project_direction(
        unit_rows(directions[s.info.name][None])) for s in sources]
    space = AnchorSpace().fit(target.anchors[_layer(target)].astype(np.float64))
    return reconstruct(space, canonical_axes(projected).axes, "ridge").vectors[0]


def _by_kind(prompts, layer: int, target: ModelActivations, vector: np.ndarray, split: str) -> None:
    scorer = AnchorZScorer(vector[None]).fit(target.anchors[layer].astype(np.float64))
    z = {side: scorer.transform(getattr(prompts, side)[layer])[:, 0] for side in ("pos", "neg")}
    kind_of = {row["text"]: row["kind"] for row in lookalikes(split)}
    negatives = [kind_of.get(t, "?") for t in next(s for s in scored_sets(split) if s.name == prompts.name).negative]
    click.echo(f"{target.info.name:>13} L{layer:<3} harmful requests: mean z {z['pos'].mean():+.2f}")
    for kind in sorted(set(negatives), key=lambda k: -float(np.mean(z["neg"][np.array(negatives) == k]))):
        these = z["neg"][np.array(negatives) == kind]
        click.echo(f"{'':>18} {kind:<14} n={len(these):<3} mean z {these.mean():+.2f}  AUROC vs harmful {auroc(z['pos'], these):.3f}")


@click.command()
@click.argument("variant", type=click.Choice(["estimators", "scores", "paper", "kinds"]))
@click.option("--split", type=click.Choice(SPLITS), default="dev", show_default=True)
@click.option("--models", default=MODELS, show_default=True)
@click.option("--acs-data", default="../shared/acs-data", show_default=True, help="the paper's data (variant paper)")
def main(variant: str, split: str, models: str, acs_data: str) -> None:
    catalogue = load_catalogue()
    acts = [collect_activations(m, catalogue) for m in models.split(",")]
    sets = [s for s in scored_sets(split) if s.axis == AXIS]
    ours = {a.info.name: (a.pos[AXIS][_layer(a)].astype(np.float64), a.neg[AXIS][_layer(a)].astype(np.float64))
            for a in acts}
    paper: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if variant == "paper":
        rows = [json.loads(line) for line in Path(acs_data, "axes", f"{AXIS}_anchor.jsonl").read_text().splitlines() if line]
        texts = [r["positive"] for r in rows] + [r["negative"] for r in rows]
        for a in acts:
            got = extract_activations(load_model(a.info.name), texts, [_layer(a)], cache=ActivationCache())[_layer(a)]
            paper[a.info.name] = (got[:len(rows)].astype(np.float64), got[len(rows):].astype(np.float64))
    for i, target in enumerate(acts):
        sources, layer = acts[:i] + acts[i + 1:], _layer(target)
        ext = {s.name: s for s in external_activations(target.info.name, sets, [layer])}
        variants: dict[str, tuple[np.ndarray, Callable]] = {}
        cosine = _score_functions(target.anchors[layer].astype(np.float64))["cosine (shipped)"]
        if variant == "kinds":
            _by_kind(ext[f"refusal_vs_lookalike_{split}"], layer, target,
                     _reconstructed(target, sources, {s: p.mean(0) - n.mean(0) for s, (p, n) in ours.items()}), split)
            continue
        if variant == "estimators":
            for name, fn in ESTIMATORS.items():
                variants[name] = (_reconstructed(target, sources, {s: fn(*ours[s]) for s in ours}), cosine)
        elif variant == "scores":
            shipped = _reconstructed(target, sources, {s: p.mean(0) - n.mean(0) for s, (p, n) in ours.items()})
            for name, fn in _score_functions(target.anchors[layer].astype(np.float64)).items():
                variants[name] = (shipped, fn)
        else:
            def pooled(s: str) -> np.ndarray:
                return (np.concatenate([ours[s][0], paper[s][0]]).mean(0)
                        - np.concatenate([ours[s][1], paper[s][1]]).mean(0))
            for name, fn in (("ours (shipped)", lambda s: ours[s][0].mean(0) - ours[s][1].mean(0)),
                             ("paper", lambda s: paper[s][0].mean(0) - paper[s][1].mean(0)), ("pooled", pooled)):
                variants[name] = (_reconstructed(target, sources, {s: fn(s) for s in ours}), cosine)
        for name, (vector, score) in variants.items():
            cells = [f"{s.name} {auroc(score(s.pos[layer].astype(np.float64), vector), score(s.neg[layer].astype(np.float64), vector)):.3f}"
                     for s in ext.values()]
            click.echo(f"{target.info.name:>13} L{layer:<3} {name:<26} " + "  ".join(cells))


if __name__ == "__main__":
    main()
