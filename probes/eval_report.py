"""Writes an evaluation's results.json, results.md and plots (ROC per axis, ACS cosine heatmap)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from guard.anchor_space import AnchorSpace
from guard.text_files import write_text_atomic
from probes.activations import ModelActivations
from probes.directions import native_directions


def _accuracy_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def mean_accuracy(rows: list[dict]) -> float | None:
    """Mean K-way accuracy over targets; None when it was skipped (fewer than two axes)."""
    values = [r["multiclass_accuracy"] for r in rows if r["multiclass_accuracy"] is not None]
    return float(np.mean(values)) if values else None


def _layer_cell(layer) -> str:
    return "per axis" if isinstance(layer, dict) else str(layer)


def markdown_table(results: dict) -> str:
    axes = results["axes"]
    lines = ["| target | method | layer | 10-way acc | mean AUROC | TPR@1% | TPR@5% | " + " | ".join(axes) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(axes)]
    for row in results["results"]:
        cells = " | ".join(f"{row['auroc'][a]:.3f}" for a in axes)
        tpr = row["mean_tpr_at_fpr"]
        lines.append(f"| {row['target']} | {row['method']} | {_layer_cell(row['layer'])} | "
                     f"{_accuracy_text(row['multiclass_accuracy'])} | {row['mean_auroc']:.3f} | {tpr['0.01']:.3f} | "
                     f"{tpr['0.05']:.3f} | {cells} |")
    summary = ["", "| method | mean 10-way acc | mean AUROC | mean TPR @ 1% FPR | mean TPR @ 5% FPR (over targets) |",
               "|---|---|---|---|---|"]
    for m, row in summary_by_method(results).items():
        summary.append(f"| {m} | {_accuracy_text(row['multiclass_accuracy'])} | {row['mean_auroc']:.3f} | "
                       f"{row['tpr_at_1pct_fpr']:.3f} | {row['tpr_at_5pct_fpr']:.3f} |")
    return "\n".join(lines + summary) + "\n"


# The methods whose per-axis operating points are listed (the others are in results.json).
OPERATING_POINT_METHODS = ("reconstructed_axis", "reconstructed_axis_per_axis_layer", "acs_probe_transductive",
                           "native_axis")


def operating_point_table(results: dict) -> str:
    """Per target, method and axis: AUROC next to TPR at 1 % / 5 % FPR with bootstrap 95 % intervals."""
    lines = ["| target | method | axis | AUROC | TPR @ 1% FPR [95% CI] | TPR @ 5% FPR [95% CI] |",
             "|---|---|---|---|---|---|"]
    for row in results["results"]:
        if row["method"] not in OPERATING_POINT_METHODS:
            continue
        for axis in results["axes"]:
            ops = row["tpr_at_fpr"][axis]
            cells = [f"{ops[f]['tpr']:.2f} [{ops[f]['low']:.2f}, {ops[f]['high']:.2f}]" for f in ("0.01", "0.05")]
            lines.append(f"| {row['target']} | {row['method']} | {axis} | {row['auroc'][axis]:.3f} | "
                         f"{cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def summary_by_method(results: dict) -> dict[str, dict[str, float | None]]:
    out = {}
    for m in dict.fromkeys(r["method"] for r in results["results"]):
        rows = [r for r in results["results"] if r["method"] == m]
        out[m] = {"multiclass_accuracy": mean_accuracy(rows),
                  "mean_auroc": float(np.mean([r["mean_auroc"] for r in rows])),
                  "tpr_at_1pct_fpr": float(np.mean([r["mean_tpr_at_fpr"]["0.01"] for r in rows])),
                  "tpr_at_5pct_fpr": float(np.mean([r["mean_tpr_at_fpr"]["0.05"] for r in rows]))}
    return out


def _plot_roc(detail: dict, axes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    scored = detail["scores"]["reconstructed_axis"]
    cols = 5
    rows = int(np.ceil(len(axes) / cols))
    fig, grid = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for k, axis in enumerate(axes):
        ax = grid[k // cols][k % cols]
        for method, style in (("reconstructed_axis", "-"), ("native_axis", "--"), ("random_axis", ":")):
            s = detail["scores"][method]
            y = np.r_[np.ones(len(s.pos[axis])), np.zeros(len(s.neg[axis]))]
            fpr, tpr, _ = roc_curve(y, np.r_[s.pos[axis][:, k], s.neg[axis][:, k]])
            ax.plot(fpr, tpr, style, label=method.replace("_axis", ""))
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
        ax.set_title(axis, fontsize=9)
        ax.tick_params(labelsize=7)
    del scored
    for k in range(len(axes), rows * cols):
        grid[k // cols][k % cols].axis("off")
    grid[0][0].legend(fontsize=7)
    fig.suptitle(f"ROC on held-out target {detail['target']} (layer {detail['layer']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_heatmap(models: list[ModelActivations], layers: dict[str, int], axes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks, labels = [], []
    for m in models:
        layer = layers[m.info.name]
        dirs = native_directions({a: m.pos[a][layer] for a in axes}, {a: m.neg[a][layer] for a in axes}, axes)
        blocks.append(AnchorSpace().fit(m.anchors[layer]).project_direction(dirs))
        labels += [f"{m.info.name}:{a}" for a in axes]
    stack = np.concatenate(blocks)
    cos = stack @ stack.T
    size = max(6, 0.28 * len(labels))
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(cos, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    fig.colorbar(im, ax=ax, shrink=0.7, label="cosine in ACS")
    ax.set_title("Native axes of every model, projected to anchor space")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out_dir: str | Path, results: dict, details: list[dict], models: list[ModelActivations]) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {**results, "summary": summary_by_method(results)}
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    md = ["# Leave-one-family-out evaluation", "",
          "Each model in turn is the target; the others are the sources. Only `native_axis` uses the target's labels "
          "(ceiling, reference only); every other method sees the target's anchors and the unlabeled prompts it scores.",
          "", f"Layers (target, chosen from anchors by CKA): {results['layers']}",
          f"Per-axis layers (`reconstructed_axis_per_axis_layer`, from anchors only): {results.get('axis_layers', {})}",
          "", "TPR at a fixed FPR: the threshold is the score that at most 1 % / 5 % of the test negatives exceed; "
          "95 % intervals by bootstrap (positives and negatives resampled apart, 1000 rounds).", "",
          markdown_table(results), "", "## Operating points per axis", "", operating_point_table(results)]
    write_text_atomic(out / "results.md", "\n".join(md))
    written = [out / "results.json", out / "results.md"]
    for detail in details:
        path = out / f"roc_{detail['target']}.png"
        _plot_roc(detail, results["axes"], path)
        written.append(path)
    heat = out / "acs_axis_cosines.png"
    _plot_heatmap(models, results["layers"], results["axes"], heat)
    written.append(heat)
    return written
