"""Regenerates probes/REPORT.md: the behaviour catalogue's quality gates on the three real models.

Gates (issue #3): native diff-of-means AUROC on the test pairs >= 0.90 per axis; prompt-length-only
AUROC <= 0.65 per axis; bag-of-words logistic regression (cross-validated) reported; cosine between
different axes' native directions flagged above 0.8; leave-one-family-out transfer with this
catalogue (reconstructed_axis mean AUROC >= 0.90 per held-out family; acs_probe 10-way reported).

Usage: python -m scripts.catalogue_report [--models a,b,c] [--out probes/REPORT.md]
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_score

from integrations.activation_collection import collect_activations
from probes.catalogue import load_catalogue
from probes.directions import native_direction
from probes.eval_report import write_report
from probes.evaluation import evaluate_lofo

MODELS = "smollm2-135m,gemma3-270m,qwen2.5-0.5b"

ANALYSIS = """\
- **Matched pairs are hard on purpose.** Every pair shares topic, persona and wording and differs only
  in the behaviour. Paired accuracy stays far above the unpaired AUROC on the failing axes: the models
  do order a positive above its own look-alike, but the spread *between* scenarios (topic, first-person
  vs instruction framing) along the diff-of-means direction is as large as the behaviour gap. That is
  a property of 135M-500M models' representations; we did not make the pairs easier (e.g. one framing
  for all test pairs, or unmatched negatives) to pass the gate.
- **Refusal on look-alikes.** The paper's refusal axis (harmful vs unrelated benign requests) scores
  ~0.95 in distribution but ~0.55 on look-alike sets on these models; ours reaches 0.74-0.87 with the
  model's own direction on strict look-alikes. Below the 0.90 gate, but it is the right test.
- **Gemma-3-270M is a base model** read without a chat template (its GGUF has none); it fails most
  gates and is the weakest transfer target, as in the paper.
- **Lexical separability.** Jailbreak framing is lexical by nature (bag-of-words ~0.97); length is not
  a confound anywhere (all length-only AUROCs within 0.35-0.65).
- **Transfer gate** (reconstructed mean AUROC >= 0.90) is not met on this catalogue; it tracks the
  native ceiling, which is itself 0.80-0.87 here."""


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def length_auroc(pairs) -> float:
    return _auroc(np.array([len(p.positive.split()) for p in pairs]), np.array([len(p.negative.split()) for p in pairs]))


def bow_accuracy(pairs) -> float:
    texts = [p.positive for p in pairs] + [p.negative for p in pairs]
    labels = np.r_[np.ones(len(pairs)), np.zeros(len(pairs))]
    x = CountVectorizer(lowercase=True, min_df=1).fit_transform(texts)
    return float(cross_val_score(LogisticRegression(max_iter=2000), x, labels, cv=5).mean())


@click.command()
@click.option("--models", default=MODELS, show_default=True)
@click.option("--out", default="probes/REPORT.md", show_default=True)
@click.option("--eval-out", default="bench/results/catalogue_lofo", show_default=True)
def main(models: str, out: str, eval_out: str) -> None:
    catalogue = load_catalogue()
    axes = catalogue.axis_names
    names = models.split(",")
    acts = [collect_activations(m, catalogue) for m in names]
    results, details = evaluate_lofo(acts, catalogue.axis_specs(), catalogue.anchors_sha256)
    results["split"] = "built-in catalogue test split (pairs 100..149)"
    write_report(eval_out, results, details, acts)
    layers = results["layers"]

    lines = ["# Behaviour catalogue: quality report", "",
             "Regenerate with `make report` (runs `python -m scripts.catalogue_report`). Models read at the layer the "
             "core pipeline picks for them as a held-out target (anchors-only CKA choice): "
             + ", ".join(f"`{m}` layer {layers[m]}" for m in names) + ".", ""]
    # 1. native AUROC per model and axis, 2. length, 3. bag of words
    lines += ["## Native diff-of-means AUROC on the 50 test pairs (gate >= 0.90)", "",
              "In brackets: paired accuracy, the fraction of test pairs whose positive scores above its own matched "
              "negative.", "",
              "| axis | " + " | ".join(names) + " | length-only AUROC (gate <= 0.65) | bag-of-words LR acc (5-fold CV) |",
              "|---|" + "---|" * len(names) + "---|---|"]
    native = {}
    failures = []
    for axis in axes:
        cells = []
        for m in acts:
            layer = layers[m.info.name]
            v = native_direction(m.pos[axis][layer], m.neg[axis][layer])
            mean = m.anchors[layer].mean(0)
            sp, sn = (m.test_pos[axis][layer] - mean) @ v, (m.test_neg[axis][layer] - mean) @ v
            a = _auroc(sp, sn)
            paired = float(np.mean(sp > sn))  # a positive above its own matched negative
            native[(m.info.name, axis)] = v
            cells.append(f"{a:.3f}" + ("" if a >= 0.90 else " ✗") + f" ({paired:.2f})")
            if a < 0.90:
                failures.append(f"native AUROC {a:.3f} for `{axis}` on `{m.info.name}`")
        length = length_auroc(catalogue.test[axis])
        if not 0.35 <= length <= 0.65:
            failures.append(f"length-only AUROC {length:.3f} for `{axis}`")
        lines.append(f"| {axis} | " + " | ".join(cells) + f" | {length:.3f} | {bow_accuracy(catalogue.calibration[axis] + catalogue.test[axis]):.3f} |")
    # 4. cross-axis cosines
    lines += ["", "## Cosine between different axes' native directions (flag > 0.8)", ""]
    for m in acts:
        mat = np.array([[native[(m.info.name, a)] @ native[(m.info.name, b)] for b in axes] for a in axes])
        off = mat - np.eye(len(axes)) * 2
        i, j = np.unravel_index(np.argmax(off), off.shape)
        flagged = [(axes[a], axes[b], mat[a, b]) for a in range(len(axes)) for b in range(a + 1, len(axes)) if mat[a, b] > 0.8]
        lines.append(f"- `{m.info.name}`: max off-diagonal cosine {mat[i, j]:.3f} ({axes[i]} vs {axes[j]})"
                     + ("; flagged: " + ", ".join(f"{a}/{b} {c:.2f}" for a, b, c in flagged) if flagged else "; none above 0.8"))
        if flagged:
            failures.append(f"axes too similar on {m.info.name}: {flagged}")
    # 5. transfer
    lines += ["", "## Leave-one-family-out transfer with this catalogue (gate: reconstructed_axis mean AUROC >= 0.90)", "",
              "| held-out target | acs_probe 10-way | acs_probe mean AUROC | reconstructed_axis 10-way | reconstructed_axis mean AUROC | native_axis mean AUROC |",
              "|---|---|---|---|---|---|"]
    by = {(r["target"], r["method"]): r for r in results["results"]}
    for t in names:
        rec = by[(t, "reconstructed_axis")]
        if rec["mean_auroc"] < 0.90:
            failures.append(f"reconstructed_axis mean AUROC {rec['mean_auroc']:.3f} on held-out `{t}`")
        lines.append(f"| {t} | {by[(t, 'acs_probe')]['multiclass_accuracy']:.3f} | {by[(t, 'acs_probe')]['mean_auroc']:.3f} | "
                     f"{rec['multiclass_accuracy']:.3f} | {rec['mean_auroc']:.3f} | {by[(t, 'native_axis')]['mean_auroc']:.3f} |")
    lines += ["", f"Per-axis transfer AUROCs, ROC curves and the cross-model heatmap: `{eval_out}/`.", "",
              "## Gate failures", ""] + ([f"- {f}" for f in failures] or ["- none"])
    lines += ["", "## Reading the failures", "", ANALYSIS]
    Path(out).write_text("\n".join(lines) + "\n")
    Path(eval_out, "gates.json").write_text(json.dumps({"failures": failures}, indent=2) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
