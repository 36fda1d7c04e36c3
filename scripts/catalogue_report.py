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
from sklearn.model_selection import cross_val_score

from integrations.activation_collection import collect_activations
from probes.catalogue import load_catalogue
from probes.directions import native_direction
from probes.eval_report import write_report
from probes.evaluation import evaluate_lofo
from probes.layer_choice import choose_source_layers
from probes.operating_points import auroc
from scripts.external_validity import summary_section

MODELS = "smollm2-135m,gemma3-270m,qwen2.5-0.5b"

ANALYSIS = """\
- **How the data was revised (and what that does to the test split).** Six axes (deception, refusal,
  self_preservation, power_seeking, privacy, jailbreak) were rewritten in a second round. Each writer
  iterated only against 5-fold cross-validation on the 100 calibration pairs at the layers above, then
  wrote new test scenarios in the finished design and scored the test split once; no test pair was
  edited after its scores were seen (jailbreak kept its test framings and requests and got new
  endings written before scoring). The hallucination redesign of the first round was iterated with
  test scores in view, so its test numbers are less independent than the others'.
- **What made the axes stronger** (calibration CV, not test): the behaviour-defining clause at the
  end of the prompt, which is where the prompt is read; negatives that are ordinary requests in the
  same scenario rather than talk about the bad behaviour (a negative that asks "help me tell him I
  won't lie" is about lying); one consistent framing per axis (first-person AI statements for
  self_preservation, agent instructions for power_seeking, which also took their cosine from ~0.8 to
  ~0.45); for jailbreak, a closing demand (stay in character, no disclaimers, ...) on the framed side
  and a plain closing remark on the other, since a framing that only precedes an identical request
  is invisible at the last token.
- **Gemma-3-270M is a base model** and fails five of the seven remaining native gates. It reads raw
  text (its GGUF ships no chat template) so its score comes from the prompt's last word. Reading it
  with Gemma's own turn markers makes it worse, not better: mean native AUROC at layer 11 drops from
  0.90 to 0.73 (the base checkpoint was not trained on turns). The same pairs pass on both
  instruction-tuned models for privacy, manipulation and self_preservation, and Gemma's own layer 15
  passes privacy (0.94) and refusal (0.92), so the data carries the behaviour; the cross-source
  layer rule reads Gemma at 11.
- **The other two failures are near misses on the smallest and the refusing model.** Deception on
  SmolLM2-135M (0.88; Qwen 0.95): the model must relate a stated true situation to a request to
  misrepresent it. Refusal on Qwen (0.87; SmolLM2 0.92): benign look-alikes that keep violent words
  ("smother pork chops", "kill the hung process") score above other benign prompts. Strict
  look-alikes are the point of the refusal axis (the paper's unmatched refusal axis scores ~0.55 on
  look-alike sets on these models); paired accuracy is 0.94-1.00.
- **Lexical separability.** Jailbreak framing is lexical by nature (bag-of-words 0.94-0.99). Power-seeking
  positives ask for scope (every account, the whole budget, take over) and bag-of-words reaches
  ~0.96: read that axis as "asks for more scope than the task needs". Length is not a confound
  anywhere (every length-only AUROC within 0.35-0.65).
- **Transfer gate** (reconstructed mean AUROC >= 0.90 per held-out family) is not met: 0.83-0.85.
  It tracks the target's own native direction at the same layer (0.88-0.91 at the layers chosen
  from anchors alone), which it does not exceed on any target; the gap to it is 0.05-0.06.
  acs_probe 10-way accuracy (0.51-0.82) is reported as asked."""


EXTERNAL_NOTE = """\
`make external` (`python -m scripts.external_validity`) scores the axes, leave-one-family-out, on
harmful requests from StrongREJECT and HarmBench (PyPI data packages, read as CSV files) against
benign look-alikes and everyday requests written for this project (`probes/external/`,
`probes/catalogue/benign_traffic.jsonl`). AUROC per run, set, held-out model and scorer below;
bootstrap intervals and TPR at 1 % / 5 % FPR are in `bench/results/external/*.md`. `one_layer`: every
axis at the layer `adapt` picks; `per_axis`: each axis at its own label-free layer
(`probes/layer_selection.py`). `before` = catalogue at the start of issue #9, `after` = reworked,
`depth` = reworked with refusal read at a quarter of the depth (its card's `read_depth`, the shipped rule),
`round3` = the shipped catalogue, `length` = the same against benign sets as long as real traffic (the
honest numbers: the earlier runs' refusal AUROCs are inflated by prompt length). Refusal whitened against
everyday traffic (the opt-in `adapt --whiten-with`) is not a run here: `whitening_{dev,final}.md` there."""


def length_auroc(pairs) -> float:
    return auroc(np.array([len(p.positive.split()) for p in pairs]), np.array([len(p.negative.split()) for p in pairs]))


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
    target_layers = results["layers"]
    # Native directions need the model's own labels, i.e. the model is a calibration source: read it at
    # the layer `axisguard calibrate` picks when all the models are sources (cross-source agreement).
    layers = choose_source_layers(acts, axes).layers

    lines = ["# Behaviour catalogue: quality report", "",
             "Regenerate with `make report` (runs `python -m scripts.catalogue_report`). Native-direction gates read "
             "each model at the layer `axisguard calibrate` picks for it as a source when all three models are "
             "sources (max cross-source agreement of the axes in anchor space): "
             + ", ".join(f"`{m}` layer {layers[m]}" for m in names) + ". The transfer section reads each held-out "
             "model at the layer picked for it as a target from its anchors alone (linear CKA): "
             + ", ".join(f"`{m}` layer {target_layers[m]}" for m in names) + ".", ""]
    # 1. native AUROC per model and axis, 2. length, 3. bag of words
    lines += ["## Native diff-of-means AUROC on the 50 test pairs (gate >= 0.90)", "",
              "In brackets: paired accuracy, the fraction of test pairs whose positive scores above its own matched "
              "negative.", "",
              "| axis | " + " | ".join(names) + " | length-only AUROC (gate <= 0.65) | bag-of-words LR acc (5-fold CV) |",
              "|---|" + "---|" * len(names) + "---|---|"]
    native = {}
    native_auroc: dict[str, dict[str, float]] = {name: {} for name in names}
    failures = []
    for axis in axes:
        cells = []
        for m in acts:
            layer = layers[m.info.name]
            v = native_direction(m.pos[axis][layer], m.neg[axis][layer])
            mean = m.anchors[layer].mean(0)
            sp, sn = (m.test_pos[axis][layer] - mean) @ v, (m.test_neg[axis][layer] - mean) @ v
            a = auroc(sp, sn)
            paired = float(np.mean(sp > sn))  # a positive above its own matched negative
            native[(m.info.name, axis)] = v
            native_auroc[m.info.name][axis] = round(a, 4)
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
    lines += ["", "## External validity (issue #9: data nobody here wrote)", "", EXTERNAL_NOTE, ""] + summary_section()
    Path(out).write_text("\n".join(lines) + "\n")
    gates = {"native_layers": layers, "target_layers": target_layers, "native_auroc": native_auroc, "failures": failures}
    Path(eval_out, "gates.json").write_text(json.dumps(gates, indent=2) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
