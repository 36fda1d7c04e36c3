"""How far could *any* linear readout get? Supervised ceilings for harmful-request detection (issue #9).

The shipped refusal axis is label-free: nothing it does sees an external label. To tell "our axis
transfers badly" from "these models do not separate the sets linearly", this diagnostic fits readouts
*on the external labels themselves*, out of fold, per model and per grid layer (last prompt token,
as the monitor reads it):

* ``cv_mean_diff``: difference of means of the training folds, scored as the centred cosine the
  runtime uses (the same estimator as the axis, given the very labels it is judged on);
* ``cv_logistic``: L2 logistic regression on standardised activations (C = 0.1).

Five stratified folds, AUROC of the pooled out-of-fold scores. Both can use anything that tells
the sets apart, including how public benchmarks are written against how we write, so they bound what
a linear detector at that position can reach rather than measure harm recognition. ``dev_to_final``
fits both on all of DEV (41 HarmBench requests vs our dev look-alikes) and scores FINAL (StrongREJECT
and other HarmBench requests vs other look-alikes): what a handful of public labels buy. Nothing here feeds back into the shipped axis.

    python -m scripts.refusal_ceiling --out bench/results/external/ceiling.json   # and ceiling.png
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from guard.scoring import centred_cosines
from integrations.activation_cache import ActivationCache
from integrations.hf_extraction import extract_activations
from integrations.hf_loading import load_model
from probes.axis_layers import nearest_layer
from probes.operating_points import auroc
from scripts.external_validity import MODELS, scored_sets

DEPTH, FOLDS, SEED = 0.25, 5, 0


def _mean_diff_scores(x: np.ndarray, y: np.ndarray, fit: np.ndarray, score: np.ndarray, centre: np.ndarray) -> np.ndarray:
    direction = x[fit][y[fit] == 1].mean(0) - x[fit][y[fit] == 0].mean(0)
    return centred_cosines(x[score], centre, direction[None])[:, 0]


def out_of_fold_auroc(x: np.ndarray, y: np.ndarray, method: str, centre: np.ndarray) -> float:
    """AUROC of pooled out-of-fold scores of ``method`` fitted on the other folds' labels."""
    scores = np.empty(len(y))
    for fit, held in StratifiedKFold(FOLDS, shuffle=True, random_state=SEED).split(x, y):
        if method == "cv_mean_diff":
            scores[held] = _mean_diff_scores(x, y, fit, held, centre)
        else:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
            scores[held] = model.fit(x[fit], y[fit]).decision_function(x[held])
    return auroc(scores[y == 1], scores[y == 0])


def _activations(model: str, texts: list[str], layers: list[int]) -> dict[int, np.ndarray]:
    return {layer: a.astype(np.float64) for layer, a in
            extract_activations(load_model(model), texts, layers, cache=ActivationCache(), progress=False).items()}


def ceilings(model: str) -> dict:
    """Per set and layer: out-of-fold AUROC of both readouts; plus DEV -> FINAL transfer per layer."""
    loaded = load_model(model)
    layers, n = list(range(loaded.num_layers)), loaded.num_layers
    sets = {s.name: s for split in ("dev", "final") for s in scored_sets(split) if s.axis == "refusal"}
    texts = list(dict.fromkeys(t for s in sets.values() for t in s.positive + s.negative))
    where = {t: i for i, t in enumerate(texts)}
    acts = _activations(model, texts, layers)
    out: dict = {"model": model, "num_layers": n, "shipped_layer": nearest_layer(layers, n, DEPTH), "sets": {}}
    for name, s in sets.items():
        idx = np.array([where[t] for t in s.positive + s.negative])
        y = np.r_[np.ones(len(s.positive)), np.zeros(len(s.negative))].astype(int)
        out["sets"][name] = {m: {layer: out_of_fold_auroc(acts[layer][idx], y, m, acts[layer][idx].mean(0))
                                 for layer in layers} for m in ("cv_mean_diff", "cv_logistic")}
    dev, final = sets["refusal_vs_lookalike_dev"], sets["refusal_vs_lookalike_final"]
    transfer: dict[str, dict[int, float]] = {"mean_diff": {}, "logistic": {}}
    for layer in layers:
        a = acts[layer]
        d_pos, d_neg = a[[where[t] for t in dev.positive]], a[[where[t] for t in dev.negative]]
        f_pos, f_neg = a[[where[t] for t in final.positive]], a[[where[t] for t in final.negative]]
        centre, direction = np.concatenate([d_pos, d_neg]).mean(0), d_pos.mean(0) - d_neg.mean(0)
        transfer["mean_diff"][layer] = auroc(centred_cosines(f_pos, centre, direction[None])[:, 0],
                                             centred_cosines(f_neg, centre, direction[None])[:, 0])
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        probe.fit(np.concatenate([d_pos, d_neg]), np.r_[np.ones(len(d_pos)), np.zeros(len(d_neg))])
        transfer["logistic"][layer] = auroc(probe.decision_function(f_pos), probe.decision_function(f_neg))
    out["dev_to_final"] = transfer
    return out


def summary(results: list[dict]) -> list[str]:
    """One line per model and set: the readouts at the shipped layer and at their best layer."""
    lines = []
    for r in results:
        shipped = r["shipped_layer"]
        for name, by in r["sets"].items():
            cells = []
            for method, per_layer in by.items():
                best = max(per_layer, key=lambda k: per_layer[k])
                cells.append(f"{method} L{shipped} {per_layer[shipped]:.3f} / best L{best} {per_layer[best]:.3f}")
            lines.append(f"{r['model']:>13} {name:<27} " + "   ".join(cells))
        for method, per_layer in r["dev_to_final"].items():
            best = max(per_layer, key=lambda k: per_layer[k])
            lines.append(f"{r['model']:>13} {'dev_to_final look-alike':<27} {method} L{shipped} {per_layer[shipped]:.3f}"
                         f" / best L{best} {per_layer[best]:.3f}")
    return lines


def plot(results: list[dict], shipped_run: Path, out: Path) -> Path:
    """Per model, FINAL harmful vs look-alike by layer: the readouts with labels against the label-free
    axis at its layer (from the shipped catalogue's external run) and the 0.85 goal."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shipped = json.loads(shipped_run.read_text())["results"] if shipped_run.is_file() else {}
    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 3.6), squeeze=False, sharey=True)
    for ax, r in zip(axes[0], results, strict=True):
        lines = {**{f"{m}, CV on FINAL": v for m, v in r["sets"]["refusal_vs_lookalike_final"].items()},
                 **{f"{m}, fitted on DEV": v for m, v in r["dev_to_final"].items()}}
        for label, per_layer in lines.items():
            layers = sorted(int(k) for k in per_layer)
            ax.plot(layers, [per_layer[k] if k in per_layer else per_layer[str(k)] for k in layers], label=label, lw=1.2)
        if r["model"] in shipped:
            auc = shipped[r["model"]]["sets"]["refusal_vs_lookalike_final"]["scores"]["per_axis/reconstructed"]["auroc"]
            ax.plot([r["shipped_layer"]], [auc], "k*", ms=11, label="shipped axis (label-free)")
        ax.axhline(0.85, color="k", ls="--", lw=1)
        ax.set_title(f"{r['model']}: FINAL harmful vs look-alike", fontsize=9)
        ax.set_xlabel("layer")
    axes[0][0].set_ylabel("AUROC")
    axes[0][0].set_ylim(0.5, 1.0)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


@click.command()
@click.option("--models", default=MODELS, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="write every layer's numbers as JSON")
def main(models: str, out: Path | None) -> None:
    results = [ceilings(m) for m in models.split(",")]
    for line in summary(results):
        click.echo(line)
    if out is not None:
        out.write_text(json.dumps(results, indent=1) + "\n")
        click.echo(f"wrote {out} and {plot(results, out.parent / 'round3_final.json', out.with_suffix('.png'))}")


if __name__ == "__main__":
    main()
