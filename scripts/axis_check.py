"""Diagnose one catalogue axis while writing it, without looking at its test split.

For each model, at the layer `make report` recorded for it as a source (or ``--layer``): 5-fold
cross-validated native AUROC and paired accuracy on the axis's calibration pairs, then the
calibration positives that score lowest and the negatives that score highest (held-out folds,
z-scored per fold and averaged over models), which are the scenarios that break the axis. Also
the length-only AUROC and a bag-of-words baseline. ``--test`` adds the test-split AUROC: run it
once, when the design is final (see probes/README.md, "Changing the catalogue").

    python -m scripts.axis_check deception [--models smollm2-135m,qwen2.5-0.5b] [--test]
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from sklearn.model_selection import KFold

from integrations.activation_collection import collect_activations
from probes.catalogue import load_catalogue
from probes.directions import native_direction
from probes.operating_points import auroc
from scripts.catalogue_report import bow_accuracy, length_auroc

GATES = Path("bench/results/catalogue_lofo/gates.json")
MODELS = "smollm2-135m,gemma3-270m,qwen2.5-0.5b"


def cross_validated(pos: np.ndarray, neg: np.ndarray, folds: int = 5) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Mean held-out AUROC and paired accuracy; per-pair held-out scores z-scored within their fold."""
    aurocs, paired = [], []
    z_pos, z_neg = np.zeros(len(pos)), np.zeros(len(neg))
    for train, held in KFold(folds, shuffle=True, random_state=0).split(pos):
        v = native_direction(pos[train], neg[train])
        sp, sn = pos[held] @ v, neg[held] @ v
        aurocs.append(auroc(sp, sn))
        paired.append(np.mean(sp > sn))
        both = np.r_[sp, sn]
        z_pos[held], z_neg[held] = (sp - both.mean()) / both.std(), (sn - both.mean()) / both.std()
    return float(np.mean(aurocs)), float(np.mean(paired)), z_pos, z_neg


@click.command()
@click.argument("axis")
@click.option("--models", default=MODELS, show_default=True)
@click.option("--layer", type=int, default=None, help="read every model at this layer instead of the recorded ones")
@click.option("--test", "with_test", is_flag=True, help="also score the test split (once, when the design is final)")
@click.option("--show", default=8, show_default=True, help="weakest calibration prompts to list")
@click.option("--data", default=None, help="a catalogue directory to check instead of the built-in one (a draft)")
def main(axis: str, models: str, layer: int | None, with_test: bool, show: int, data: str | None) -> None:
    catalogue = load_catalogue(data, axes=[axis])
    cal, test = catalogue.calibration[axis], catalogue.test[axis]
    recorded = json.loads(GATES.read_text())["native_layers"] if GATES.exists() else {}
    click.echo(f"{axis}: {len(cal)} calibration / {len(test)} test pairs")
    click.echo(f"length-only AUROC: calibration {length_auroc(cal):.3f}, test {length_auroc(test):.3f} (gate 0.35-0.65)")
    click.echo(f"bag-of-words LR, 5-fold on calibration: {bow_accuracy(cal):.3f}")
    z_pos, z_neg = np.zeros(len(cal)), np.zeros(len(cal))
    names = models.split(",")
    for name in names:
        read_at = layer if layer is not None else recorded.get(name)
        acts = collect_activations(name, catalogue, layers=None if read_at is None else [read_at],
                                   splits=("calibration", "test") if with_test else ("calibration",))
        read_at = read_at if read_at is not None else acts.layers[len(acts.layers) // 2]
        centre = acts.anchors[read_at].mean(axis=0)
        pos, neg = acts.pos[axis][read_at] - centre, acts.neg[axis][read_at] - centre
        cv, paired, zp, zn = cross_validated(pos, neg)
        z_pos, z_neg = z_pos + zp / len(names), z_neg + zn / len(names)
        line = f"{name:>14} layer {read_at:<3} calibration CV AUROC {cv:.3f} (paired {paired:.2f})"
        if with_test:
            v = native_direction(pos, neg)
            tp, tn = (acts.test_pos[axis][read_at] - centre) @ v, (acts.test_neg[axis][read_at] - centre) @ v
            line += f" | test AUROC {auroc(tp, tn):.3f} (paired {np.mean(tp > tn):.2f})"
        click.echo(line)
    click.echo("calibration positives scoring lowest (held-out z, mean over models):")
    for i in np.argsort(z_pos)[:show]:
        click.echo(f"  pair {cal[i].pair_id:>3}  pos {z_pos[i]:+.2f} neg {z_neg[i]:+.2f}  {cal[i].positive[:100]}")
    click.echo("calibration negatives scoring highest:")
    for i in np.argsort(-z_neg)[:show]:
        click.echo(f"  pair {cal[i].pair_id:>3}  neg {z_neg[i]:+.2f} pos {z_pos[i]:+.2f}  {cal[i].negative[:100]}")


if __name__ == "__main__":
    main()
