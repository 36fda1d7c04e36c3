"""Few-shot learning curve (issue #9): N labelled target pairs per axis on top of the anchors-only axis.

Leave-one-family-out on the built-in catalogue: each zoo model in turn is the target, the other two
calibrate the bundle (per-axis layers); the target's axis k is read at its label-free layer. For
N = 0, 5, 10, 25, 50, 100 shots (drawn from the target's *calibration* pairs, ``--repeats`` seeded
draws), three directions are scored on the target's *test* pairs (AUROC, scored once per draw):

* ``refined``: ``probes.few_shot.refine_axis`` (shrinkage toward the anchors-only axis, strength by
  CV on the N shots; N = 0 is the anchors-only axis);
* ``shots_only``: the diff-of-means of the N shots alone (no prior);
* ``native_ceiling``: the diff-of-means of all the target's calibration pairs (uses every label).

Writes ``OUT/curve.json``, ``OUT/curve.md`` and ``OUT/curve.png``. With ``--external dev|final`` the
same directions are scored instead on the external sets (public harmful requests vs our look-alikes
and everyday traffic; jailbreak-framed vs plain public requests; ``scripts.external_validity``):
do the target's labels help on data nobody here wrote? -> ``OUT/external_{split}.{json,md,png}``.

    python -m scripts.few_shot_curve --out bench/results/few_shot
    python -m scripts.few_shot_curve --external dev --out bench/results/few_shot
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np

from guard.anchor_space import AnchorSpace
from guard.reconstruction import reconstruct
from guard.scoring import centred_cosines
from integrations.activation_collection import collect_activations
from probes.activations import ModelActivations
from probes.axis_layers import choose_axis_target_layers
from probes.calibration import build_bundle
from probes.catalogue import load_catalogue
from probes.directions import native_direction
from probes.external_data import SPLITS
from probes.external_eval import PromptSet
from probes.few_shot import refine_axis
from probes.operating_points import auroc
from scripts.external_validity import external_activations, scored_sets

SHOTS = (0, 5, 10, 25, 50, 100)
MODELS = "smollm2-135m,gemma3-270m,qwen2.5-0.5b"
# (direction [d], layer, anchor mean [d]) -> AUROC of the set it scores; keyed by name with its axis
Evaluate = Callable[[np.ndarray, int, np.ndarray], float]


def _auroc_along(v: np.ndarray, pos: np.ndarray, neg: np.ndarray, mean: np.ndarray) -> float:
    return auroc(centred_cosines(pos, mean, v[None])[:, 0], centred_cosines(neg, mean, v[None])[:, 0])


def internal_evaluations(target: ModelActivations, names: list[str]) -> dict[str, tuple[str, Evaluate]]:
    """Each axis on the target's own catalogue test split."""
    def on_test(axis: str) -> Evaluate:
        return lambda v, layer, mean: _auroc_along(v, target.test_pos[axis][layer], target.test_neg[axis][layer], mean)

    return {axis: (axis, on_test(axis)) for axis in names if axis in target.test_pos}


def external_evaluations(sets: list[PromptSet]) -> dict[str, tuple[str, Evaluate]]:
    """Each external set (public positives), scored along its axis."""
    def on_set(s: PromptSet) -> Evaluate:
        return lambda v, layer, mean: _auroc_along(v, s.pos[layer], s.neg[layer], mean)

    return {s.name: (s.axis, on_set(s)) for s in sets}


def curve_for_target(target: ModelActivations, sources: list[ModelActivations], specs, sha: str, repeats: int,
                     seed: int, evaluations: dict[str, tuple[str, Evaluate]] | None = None) -> dict:
    """The learning curve of every evaluation (default: each axis on the target's test split)."""
    names = [s.name for s in specs]
    bundle = build_bundle(sources, specs, sha, per_axis_layers=True)
    picks = choose_axis_target_layers(bundle, target.anchors, target.info.num_layers)
    rng = np.random.default_rng(seed)
    out: dict = {"layers": {p.axis: p.layer for p in picks}, "axes": {}}
    # Evaluations of one axis (e.g. harmful vs look-alikes and vs traffic) share each draw of shots:
    # one refinement per draw, and their curves compare draw for draw.
    by_axis: dict[str, dict[str, Evaluate]] = {}
    for name, (axis, evaluate) in (evaluations or internal_evaluations(target, names)).items():
        by_axis.setdefault(axis, {})[name] = evaluate
    for axis, evaluates in by_axis.items():
        k = names.index(axis)
        layer = picks[k].layer
        anchors = target.anchors[layer]
        mean = anchors.mean(axis=0)
        prior = reconstruct(AnchorSpace().fit(anchors), bundle.acs_axes[k:k + 1], "ridge").vectors[0]
        pos, neg = target.pos[axis][layer], target.neg[axis][layer]
        n_pairs = min(len(pos), len(neg))
        native = native_direction(pos, neg)
        rows: dict[str, dict] = {name: {} for name in evaluates}
        for n in SHOTS:
            if n > n_pairs:
                continue
            refined: dict[str, list[float]] = {name: [] for name in evaluates}
            shots_only: dict[str, list[float]] = {name: [] for name in evaluates}
            weights = []
            for _ in range(repeats if 0 < n < n_pairs else 1):
                idx = rng.choice(n_pairs, size=n, replace=False)
                r = refine_axis(prior, pos[idx], neg[idx], mean)
                weights.append(r.weight)
                shots = native_direction(pos[idx], neg[idx]) if n >= 1 else None
                for name, evaluate in evaluates.items():
                    refined[name].append(evaluate(r.vector, layer, mean))
                    if shots is not None:
                        shots_only[name].append(evaluate(shots, layer, mean))
            for name in evaluates:
                rows[name][str(n)] = {"refined": float(np.mean(refined[name])), "refined_sd": float(np.std(refined[name])),
                                      "shots_only": float(np.mean(shots_only[name])) if shots_only[name] else None,
                                      "weight": float(np.mean(weights))}
        for name, evaluate in evaluates.items():
            out["axes"][name] = {"axis": axis, "layer": layer, "native_ceiling": evaluate(native, layer, mean),
                                 "curve": rows[name]}
    return out


def _mean_over_axes(result: dict, n: str, key: str) -> float | None:
    values = [a["curve"][n][key] for a in result["axes"].values() if n in a["curve"] and a["curve"][n][key] is not None]
    return float(np.mean(values)) if values else None


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(results)
    fig, grid = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.4), squeeze=False)
    for ax, target in zip(grid[0], targets, strict=True):
        res = results[target]
        ns = [n for n in map(str, SHOTS) if _mean_over_axes(res, n, "refined") is not None]
        xs = [max(int(n), 1) for n in ns]
        ax.plot(xs, [_mean_over_axes(res, n, "refined") for n in ns], "o-", label="refined (prior + shots)")
        so = [(x, _mean_over_axes(res, n, "shots_only")) for x, n in zip(xs, ns, strict=True) if int(n) > 0]
        ax.plot([x for x, _ in so], [y for _, y in so], "s--", label="shots only")
        ceiling = float(np.mean([a["native_ceiling"] for a in res["axes"].values()]))
        ax.axhline(ceiling, color="grey", ls=":", label="native ceiling (all labels)")
        ax.set_xscale("log")
        ax.set_xticks(xs, ["0" if n == "0" else n for n in ns])
        ax.set_xlabel("labelled target pairs per axis (N)")
        ax.set_title(f"held-out target {target}", fontsize=9)
        ax.set_ylim(0.5, 1.0)
    grid[0][0].set_ylabel("mean test AUROC over axes")
    grid[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Few-shot refinement: leave-one-family-out, built-in catalogue test split")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(results: dict, command: str) -> str:
    lines = ["# Few-shot refinement: learning curve", "", f"Command: `{command}`", "",
             "Mean test AUROC over the ten axes (built-in catalogue test split, leave-one-family-out; shots drawn "
             "from the target's calibration pairs; each axis at its label-free per-axis layer). `refined` = "
             "shrinkage toward the anchors-only axis, the weight on the shots the smallest within one standard error of the best CV AUROC on the shots (N = 0 is the "
             "anchors-only axis); `w` = mean weight on the shots.", "",
             "| target | N | refined | shots only | w | native ceiling |", "|---|---|---|---|---|---|"]
    for target, res in results.items():
        ceiling = float(np.mean([a["native_ceiling"] for a in res["axes"].values()]))
        for n in map(str, SHOTS):
            refined = _mean_over_axes(res, n, "refined")
            if refined is None:
                continue
            shots = _mean_over_axes(res, n, "shots_only")
            lines.append(f"| {target} | {n} | {refined:.3f} | {'-' if shots is None else f'{shots:.3f}'} | "
                         f"{_mean_over_axes(res, n, 'weight'):.2f} | {ceiling:.3f} |")
    lines += ["", "Refusal axis alone:", "", "| target | layer | " + " | ".join(f"N={n}" for n in SHOTS) + " | ceiling |",
              "|---|---|" + "---|" * len(SHOTS) + "---|"]
    for target, res in results.items():
        axis = res["axes"].get("refusal")
        if axis is None:
            continue
        cells = [f"{axis['curve'][str(n)]['refined']:.3f}" if str(n) in axis["curve"] else "-" for n in SHOTS]
        lines.append(f"| {target} | {axis['layer']} | " + " | ".join(cells) + f" | {axis['native_ceiling']:.3f} |")
    return "\n".join(lines) + "\n"


def _external_markdown(results: dict, command: str, split: str) -> str:
    lines = [f"# Few-shot refinement on the external {split.upper()} sets", "", f"Command: `{command}`", "",
             "AUROC on data the project did not write (positives: public harmful requests; negatives: our look-alikes "
             "or everyday traffic; jailbreak: the public requests in our jailbreak vs plain framings), leave-one-family-out. "
             "The N shots are the target's own *catalogue* calibration pairs (our writing), so this asks whether "
             "target labels of our kind help on external data. `refined` as in `curve.md`; ceiling = all the "
             "target's calibration pairs.", "",
             "| set | target | layer | " + " | ".join(f"N={n}" for n in SHOTS) + " | shots only N=25 | ceiling |",
             "|---|---|---|" + "---|" * len(SHOTS) + "---|---|"]
    sets = list(next(iter(results.values()))["axes"])
    for name in sets:
        for target, res in results.items():
            entry = res["axes"][name]
            cells = [f"{entry['curve'][str(n)]['refined']:.3f}" if str(n) in entry["curve"] else "-" for n in SHOTS]
            shots = entry["curve"].get("25", {}).get("shots_only")
            lines.append(f"| {name} | {target} | {entry['layer']} | " + " | ".join(cells)
                         + f" | {'-' if shots is None else f'{shots:.3f}'} | {entry['native_ceiling']:.3f} |")
    return "\n".join(lines) + "\n"


def _external_plot(results: dict, path: Path, split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(next(iter(results.values()))["axes"])
    fig, grid = plt.subplots(1, len(sets), figsize=(4.4 * len(sets), 3.4), squeeze=False, sharey=True)
    for ax, name in zip(grid[0], sets, strict=True):
        for target, res in results.items():
            curve = res["axes"][name]["curve"]
            ns = [n for n in map(str, SHOTS) if n in curve]
            line = ax.plot([max(int(n), 1) for n in ns], [curve[n]["refined"] for n in ns], "o-", label=f"{target} refined")[0]
            ax.axhline(res["axes"][name]["native_ceiling"], color=line.get_color(), ls=":", lw=1)
        ax.axhline(0.85, color="k", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_xticks([max(n, 1) for n in SHOTS], [str(n) for n in SHOTS])
        ax.set_xlabel("labelled target catalogue pairs (N)")
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0.4, 1.0)
    grid[0][0].set_ylabel("AUROC (leave-one-family-out)")
    grid[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Few-shot refinement on external {split.upper()} sets (dotted: all-labels ceiling; dashed: 0.85 goal)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@click.command()
@click.option("--models", default=MODELS, show_default=True)
@click.option("--repeats", default=5, show_default=True, help="Seeded draws of the N shots per point.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default="bench/results/few_shot", show_default=True, type=click.Path(file_okay=False))
@click.option("--external", "split", type=click.Choice(SPLITS), default=None,
              help="score on the external sets of this split instead of the catalogue's test split")
def main(models: str, repeats: int, seed: int, out: str, split: str | None) -> None:
    started = time.time()
    catalogue = load_catalogue()
    specs = catalogue.axis_specs()
    names = models.split(",")
    acts = []
    for m in names:
        click.echo(f"[{time.time() - started:6.0f}s] activations of {m} (cached after the first run)", err=True)
        acts.append(collect_activations(m, catalogue))
    results = {}
    for i, target in enumerate(acts):
        click.echo(f"[{time.time() - started:6.0f}s] held-out target {target.info.name}", err=True)
        evaluations = None
        if split is not None:
            evaluations = external_evaluations(external_activations(target.info.name, scored_sets(split), target.layers))
        results[target.info.name] = curve_for_target(target, acts[:i] + acts[i + 1:], specs, catalogue.anchors_sha256,
                                                     repeats, seed, evaluations)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = f"python -m scripts.few_shot_curve --models {models} --repeats {repeats} --seed {seed} --out {out}"
    stem = "curve" if split is None else f"external_{split}"
    if split is not None:
        command += f" --external {split}"
    (out_dir / f"{stem}.json").write_text(json.dumps({"command": command, "shots": SHOTS, "results": results}, indent=2) + "\n")
    text = _markdown(results, command) if split is None else _external_markdown(results, command, split)
    (out_dir / f"{stem}.md").write_text(text)
    if split is None:
        _plot(results, out_dir / f"{stem}.png")
    else:
        _external_plot(results, out_dir / f"{stem}.png", split)
    click.echo(text)


if __name__ == "__main__":
    main()
