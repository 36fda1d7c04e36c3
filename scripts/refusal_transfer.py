"""Where the label-free refusal axis loses its signal, and what other read depths would give (issue #9).

``transfer`` (DEV): at each relative depth, three refusal directions of the same target model:

* ``native``: the difference of means of the target's own catalogue refusal pairs (what a source gives);
* ``self``: that native direction projected into the target's own anchor coordinates and reconstructed
  back (``guard.reconstruction``, ridge): what 300 anchors can carry of it;
* ``lofo``: the shipped label-free axis, reconstructed from the other two families (``axis_at_depth``),
* ``weights``: a more faithful transfer: each source's native direction written as anchor weights (ridge
  in the source's anchor span, lambda 0.1 x mean eigenvalue), the weights averaged and applied to the
  target's anchors; it lands much closer to the target's native direction than ``lofo`` does,

each with its cosine to ``native`` and its AUROC vs our look-alikes and vs everyday traffic, plus the
cosine between the sources' anchor-coordinate profiles of refusal (do the families agree?), between
the target's own profile and the canonical one, and the reconstruction's label-free fidelity (the LOFO
axis' profile on the target's anchors against the canonical one; does it tell a good depth?). If ``self`` keeps the native AUROC and ``lofo`` does not,
the anchors are not the bottleneck: the families' refusal directions differ in anchor coordinates.

``readings`` (``--split dev|final``): the shipped read (1/4 depth) against two others chosen on DEV,
1/2 depth (DEV's best on average over the three models) and the mean z over 1/4 ... 5/8 depth (a band):
AUROC (length-matched), the share of harmful requests / look-alikes above the threshold that flags 1 %
of the scored everyday half, and the percentiles of ``make demo``'s three prompts in that half.

    python -m scripts.refusal_transfer transfer
    python -m scripts.refusal_transfer readings --split dev
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from scipy.stats import spearmanr

from guard.anchor_space import AnchorSpace, unit_rows
from guard.reconstruction import reconstruct
from guard.scoring import AnchorZScorer
from integrations.activation_cache import ActivationCache
from integrations.activation_collection import collect_activations
from integrations.hf_extraction import extract_activations
from integrations.hf_loading import load_model
from probes.activations import ModelActivations
from probes.axis_layers import nearest_layer
from probes.catalogue import load_catalogue
from probes.directions import native_direction
from probes.external_data import SPLITS
from probes.operating_points import auroc
from scripts.demo_serve import PROMPTS as DEMO_PROMPTS
from scripts.external_validity import MODELS, external_activations, scored_sets
from scripts.refusal_length import AXIS, DEPTHS, axis_at_depth
from scripts.refusal_whitening import cell_columns, scored_cell

READINGS = {"shipped 1/4": (0.25,), "1/2": (0.5,), "band 1/4-5/8": (0.25, 0.375, 0.5, 0.625)}


def own_direction(model: ModelActivations, layer: int) -> np.ndarray:
    """The model's own refusal direction at ``layer``: difference of means of its catalogue pairs."""
    return native_direction(model.pos[AXIS][layer], model.neg[AXIS][layer])


def _profile(model: ModelActivations, depth: float) -> np.ndarray:
    """Unit anchor-coordinate profile of ``model``'s native refusal direction at ``depth``."""
    layer = nearest_layer(model.layers, model.info.num_layers, depth)
    space = AnchorSpace().fit(model.anchors[layer].astype(np.float64))
    return unit_rows(space.project_direction(own_direction(model, layer)[None]))[0]


def anchor_weights(model: ModelActivations, depth: float, ridge: float = 0.1) -> np.ndarray:
    """Unit anchor weights a with basisᵀ a ~ ``model``'s native refusal direction at ``depth`` (ridge dual)."""
    layer = nearest_layer(model.layers, model.info.num_layers, depth)
    basis = AnchorSpace().fit(model.anchors[layer].astype(np.float64)).basis_
    assert basis is not None  # fitted just above
    gram = basis @ basis.T
    lam = ridge * np.trace(gram) / len(gram)
    return unit_rows(np.linalg.solve(gram + lam * np.eye(len(gram)), basis @ own_direction(model, layer))[None])[0]


def _sets(model: str, split: str, layers: list[int]):
    sets = [s for s in scored_sets(split) if s.axis == AXIS]
    ext = {e.name: e for e in external_activations(model, sets, layers)}
    return ext[f"refusal_vs_lookalike_{split}"], ext[f"refusal_vs_traffic_{split}"]


def transfer(acts: list[ModelActivations]) -> dict:
    out: dict = {}
    for i, target in enumerate(acts):
        look, traffic = _sets(target.info.name, "dev", target.layers)
        rows = []
        for depth in DEPTHS:
            layer, lofo = axis_at_depth(acts, i, depth)
            anchors = target.anchors[layer].astype(np.float64)
            native = own_direction(target, layer)
            space = AnchorSpace().fit(anchors)
            weights = np.mean([anchor_weights(s, depth) for j, s in enumerate(acts) if j != i], 0)
            assert space.basis_ is not None
            directions = {"native": native, "self": reconstruct(space, space.project_direction(native[None])).vectors[0],
                          "lofo": lofo.vectors[0], "weights": unit_rows((space.basis_.T @ weights)[None])[0]}
            sources = [_profile(s, depth) for j, s in enumerate(acts) if j != i]
            canonical = unit_rows(np.mean(sources, 0)[None])[0]
            row: dict = {"depth": depth, "layer": layer, "source_agreement": round(float(sources[0] @ sources[1]), 3),
                         "target_vs_canonical": round(float(_profile(target, depth) @ canonical), 3),
                         # label-free: how well the target's anchors reproduce the canonical profile
                         "fidelity": round(float(space.project_direction(lofo.vectors[0]) @ canonical), 3)}
            for name, v in directions.items():
                scorer = AnchorZScorer(v[None]).fit(anchors)
                harm, alike, everyday = (scorer.transform(x[layer])[:, 0] for x in (look.pos, look.neg, traffic.neg))
                row[name] = {"cos_native": round(float(v @ native), 3), "lookalike": round(auroc(harm, alike), 4),
                             "traffic": round(auroc(harm, everyday), 4)}
            rows.append(row)
            click.echo(f"{target.info.name:>13} d{depth:.3f} L{layer:<2} agree {row['source_agreement']:+.2f} "
                       f"target~canon {row['target_vs_canonical']:+.2f} " + "  ".join(
                           f"{k}: cos {row[k]['cos_native']:+.2f} {row[k]['lookalike']:.3f}/{row[k]['traffic']:.3f}"
                           for k in directions))
        rho = spearmanr([r["fidelity"] for r in rows], [r["lofo"]["lookalike"] for r in rows])[0]
        click.echo(f"{target.info.name}: Spearman rho of fidelity with the LOFO AUROC over depths {rho:+.2f}")
        out[target.info.name] = rows
    return out


def readings(acts: list[ModelActivations], split: str) -> dict:
    out: dict = {}
    for i, target in enumerate(acts):
        look, traffic = _sets(target.info.name, split, target.layers)
        demo = extract_activations(load_model(target.info.name), list(DEMO_PROMPTS.values()), target.layers,
                                   cache=ActivationCache())
        cells = {}
        for name, depths in READINGS.items():
            parts = [axis_at_depth(acts, i, d) for d in depths]

            def z(x: dict[int, np.ndarray], parts: list = parts) -> np.ndarray:
                return np.mean([scorer.transform(x[layer])[:, 0] for layer, scorer in parts], 0)

            cells[name] = {"layers": [layer for layer, _ in parts],
                           **scored_cell(z(look.pos), z(look.neg), z(traffic.neg), z(demo), look, traffic)}
            click.echo(f"{target.info.name:>13} {name:>13}: {cells[name]}")
        out[target.info.name] = cells
    return out


def transfer_markdown(result: dict) -> str:
    lines = ["# Where the refusal axis loses its signal (DEV)", "", "`python -m scripts.refusal_transfer transfer`. Per depth: "
             "cosine of the two source families' anchor-coordinate refusal profiles (agree), of the target's own profile with "
             "their mean (target~canonical); then for the target's native, self-reconstructed and leave-one-family-out "
             "directions and the anchor-weight transfer: cosine to native, AUROC vs look-alikes / vs everyday.", "",
             "| model | depth (layer) | agree | target~canonical | fidelity | native | self (300 anchors) | lofo (shipped kind) | weights |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model, rows in result.items():
        for r in rows:
            lines.append(f"| {model} | {r['depth']:.3f} (L{r['layer']}) | {r['source_agreement']:+.2f} | "
                         f"{r['target_vs_canonical']:+.2f} | {r['fidelity']:.2f} | " + " | ".join(
                             f"cos {r[k]['cos_native']:+.2f}: {r[k]['lookalike']:.3f} / {r[k]['traffic']:.3f}"
                             for k in ("native", "self", "lofo", "weights")) + " |")
    return "\n".join(lines) + "\n"


def readings_markdown(result: dict, split: str) -> str:
    lines = [f"# Refusal read at other depths ({split.upper()})", "",
             f"`python -m scripts.refusal_transfer readings --split {split}`: label-free axis, leave-one-family-out. "
             "AUROC (length-matched); flags = harmful / look-alikes above the threshold that flags 1 % of the scored "
             "everyday half; demo = percentiles of `make demo`'s benign / pipe-bomb / jailbreak prompts in that half.", "",
             "| model | reading (layers) | vs look-alikes | vs everyday | flags harmful / look-alike | demo |",
             "|---|---|---|---|---|---|"]
    for model, cells in result.items():
        for name, c in cells.items():
            lines.append(f"| {model} | {name} ({', '.join(map(str, c['layers']))}) | " + " | ".join(cell_columns(c)) + " |")
    return "\n".join(lines) + "\n"


def plot_transfer(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(result), figsize=(4 * len(result), 6), sharey="row", squeeze=False)
    for col, (model, rows) in enumerate(result.items()):
        depths = [r["depth"] for r in rows]
        for k in ("native", "self", "lofo", "weights"):
            axes[0][col].plot(depths, [r[k]["lookalike"] for r in rows], marker="o", label=k)
        axes[1][col].plot(depths, [r["lofo"]["cos_native"] for r in rows], marker="o", label="cos(lofo, native)")
        axes[1][col].plot(depths, [r["source_agreement"] for r in rows], marker="s", label="cos(source profiles)")
        axes[0][col].axhline(0.85, ls="--", c="grey", lw=0.8)
        axes[0][col].set_title(f"{model}: AUROC vs look-alikes (DEV)", fontsize=9)
        axes[1][col].set_title(f"{model}: agreement", fontsize=9)
        axes[1][col].set_xlabel("relative depth")
    axes[0][0].legend(fontsize=7)
    axes[1][0].legend(fontsize=7)
    fig.suptitle("Refusal: the target's own direction, what its anchors carry of it, what the other families give")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@click.command()
@click.argument("view", type=click.Choice(["transfer", "readings"]))
@click.option("--split", type=click.Choice(SPLITS), default="dev", show_default=True, help="readings only")
@click.option("--models", default=MODELS, show_default=True)
@click.option("--out", default="bench/results/external", show_default=True)
def main(view: str, split: str, models: str, out: str) -> None:
    acts = [collect_activations(m, load_catalogue()) for m in models.split(",")]
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    if view == "transfer":
        result = transfer(acts)
        (folder / "transfer_dev.md").write_text(transfer_markdown(result))
        plot_transfer(result, folder / "transfer_dev.png")
        stem = "transfer_dev"
    else:
        result = readings(acts, split)
        stem = f"readings_{split}"
        (folder / f"{stem}.md").write_text(readings_markdown(result, split))
    (folder / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    click.echo(f"wrote {folder}/{stem}.*")


if __name__ == "__main__":
    main()
