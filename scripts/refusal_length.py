"""Length diagnostics of the shipped refusal axis (issue #9; bench/results/external/README.md, "Length").

The public harmful requests are longer than the benign prompts we wrote, and the axis' score grows
with length, so part of every external AUROC is length (``probes.length_control``). Two views:

* ``flag_rates``: the threshold that flags 1 % of everyday traffic (as ``axisguard thresholds`` sets
  it), applied to the benign look-alikes (all, shortest and longest third by token count) and to the
  public harmful requests: what a deployment whose benign prompts are longer than the sample would see;
* ``depths``: raw and length-matched AUROC of the reconstructed axis read at each relative depth of the
  grid (1/8 ... 7/8; sources and target at the same depth), the sweep that chose 1/4 depth, redone with
  length controlled.

    python -m scripts.refusal_length flag_rates --split final
    python -m scripts.refusal_length depths --split dev
"""

from __future__ import annotations

import click
import numpy as np
from scipy.stats import spearmanr

from guard.anchor_space import AnchorSpace, unit_rows
from guard.canonical import canonical_axes
from guard.reconstruction import reconstruct
from guard.scoring import AnchorZScorer
from integrations.activation_collection import collect_activations
from probes.activations import ModelActivations
from probes.axis_layers import nearest_layer
from probes.catalogue import load_catalogue
from probes.external_data import SPLITS
from probes.length_control import length_matched
from probes.operating_points import auroc, threshold_at_fpr
from scripts.external_validity import MODELS, external_activations, scored_sets

AXIS, SHIPPED_DEPTH = "refusal", 0.25
DEPTHS = (1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 7 / 8)


def axis_at_depth(acts: list[ModelActivations], target: int, depth: float) -> tuple[int, AnchorZScorer]:
    """The label-free refusal axis of ``acts[target]`` at ``depth`` (sources: the others, same depth)."""
    def layer(a: ModelActivations) -> int:
        return nearest_layer(a.layers, a.info.num_layers, depth)

    projected = [AnchorSpace().fit(s.anchors[layer(s)].astype(np.float64)).project_direction(
        unit_rows((s.pos[AXIS][layer(s)].mean(0) - s.neg[AXIS][layer(s)].mean(0))[None]))
        for j, s in enumerate(acts) if j != target]
    at = layer(acts[target])
    anchors = acts[target].anchors[at].astype(np.float64)
    vector = reconstruct(AnchorSpace().fit(anchors), canonical_axes(projected).axes, "ridge").vectors[0]
    return at, AnchorZScorer(vector[None]).fit(anchors)


def _flag_rates(acts: list[ModelActivations], split: str) -> None:
    sets = [s for s in scored_sets(split) if s.axis == AXIS]
    for i, target in enumerate(acts):
        layer, scorer = axis_at_depth(acts, i, SHIPPED_DEPTH)
        ext = {e.name: e for e in external_activations(target.info.name, sets, [layer])}
        look, traffic = ext[f"refusal_vs_lookalike_{split}"], ext[f"refusal_vs_traffic_{split}"]
        assert look.neg_len is not None and traffic.neg_len is not None and look.pos_len is not None

        def z(x: dict[int, np.ndarray], scorer: AnchorZScorer = scorer, layer: int = layer) -> np.ndarray:
            return scorer.transform(x[layer])[:, 0]

        threshold = threshold_at_fpr(z(traffic.neg), 0.01)
        benign, lengths = z(look.neg), look.neg_len
        short, long = np.quantile(lengths, [1 / 3, 2 / 3])
        rho = spearmanr(np.r_[benign, z(traffic.neg)], np.r_[lengths, traffic.neg_len])[0]
        click.echo(
            f"{target.info.name:>13} L{layer:<2} threshold {threshold:+.2f} (1 % of everyday traffic, median "
            f"{np.median(traffic.neg_len):.0f} tokens) flags: traffic {np.mean(z(traffic.neg) > threshold):.1%}, "
            f"look-alikes {np.mean(benign > threshold):.1%} (median {np.median(lengths):.0f} tokens; shortest third "
            f"{np.mean(benign[lengths <= short] > threshold):.1%}, longest third {np.mean(benign[lengths > long] > threshold):.1%}), "
            f"public harmful {np.mean(z(look.pos) > threshold):.1%} (median {np.median(look.pos_len):.0f} tokens); "
            f"Spearman rho of z with token count on the benign prompts {rho:+.2f}")


def _depths(acts: list[ModelActivations], split: str) -> None:
    sets = [s for s in scored_sets(split) if s.axis == AXIS]
    for i, target in enumerate(acts):
        ext = external_activations(target.info.name, sets, target.layers)
        for depth in DEPTHS:
            layer, scorer = axis_at_depth(acts, i, depth)
            cells = []
            for e in ext:
                assert e.pos_len is not None and e.neg_len is not None
                zp, zn = scorer.transform(e.pos[layer])[:, 0], scorer.transform(e.neg[layer])[:, 0]
                matched = length_matched(zp, zn, e.pos_len, e.neg_len)
                cells.append(f"{e.name.removeprefix('refusal_vs_')} {auroc(zp, zn):.3f} length-matched "
                             f"{matched['auroc']:.3f} ({matched['n_pairs']} pairs)")
            click.echo(f"{target.info.name:>13} depth {depth:.3f} L{layer:<2} " + "   ".join(cells))


@click.command()
@click.argument("view", type=click.Choice(["flag_rates", "depths"]))
@click.option("--split", type=click.Choice(SPLITS), default="dev", show_default=True)
@click.option("--models", default=MODELS, show_default=True)
def main(view: str, split: str, models: str) -> None:
    catalogue = load_catalogue()
    acts = [collect_activations(m, catalogue) for m in models.split(",")]
    (_flag_rates if view == "flag_rates" else _depths)(acts, split)


if __name__ == "__main__":
    main()
