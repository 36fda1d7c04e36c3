"""Refusal axis whitened against ordinary traffic (``probes.traffic_whitening``), by depth (issue #9).

For every model (leave-one-family-out, label-free) and depth of the grid: the reconstructed refusal
axis as shipped (``base``) and whitened with the covariance of everyday requests (``ridge=R``). The
whitening sample is the half of the built-in everyday sample that the split does **not** score
(DEV scores half ``a``, so it whitens on ``b``; FINAL the other way round), so no scored prompt is used.
Per cell: AUROC vs our look-alikes and vs everyday traffic, each also length-matched
(``probes.length_control``), the score's Spearman rho with token count on those benign prompts, and
the threshold that flags 1 % of the scored everyday half applied to look-alikes and harmful requests, and
where ``make demo``'s three prompts fall among the scored everyday half (percentile of their z).

    python -m scripts.refusal_whitening --split dev            # every depth, ridge 0.1 / 1 / 10, + PNG
    python -m scripts.refusal_whitening --split final --depths 0.25,0.625 --ridges 1
    python -m scripts.refusal_whitening --split dev --ridges 1 --sample catalogue_benign   # -> whitening_catalogue_benign_dev.*

``--in-sample`` instead checks what happens when thresholds are set on the very prompts an axis was
whitened on (``axisguard thresholds`` warns about it): whiten on half ``a``, set the 1 % / 5 % thresholds on
half ``a``, apply them to half ``b`` (-> ``whitening_in_sample.md``).

``--kinds`` prints, on DEV at 5/8 depth, the plain and the whitened axis per kind of look-alike (mean z,
AUROC of the harmful requests against that kind; ``scripts.refusal_variants.by_kind``).

``--sample catalogue_benign`` whitens on the target's hidden states of the benign sides of the refusal
catalogue's calibration pairs instead (our look-alike-style prompts, no harmful ones): does the covariance of
benign prompts *near* the boundary help against look-alikes the way everyday traffic's helps against everyday?
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from scipy.stats import spearmanr

from guard.scoring import AnchorZScorer
from integrations.activation_cache import ActivationCache
from integrations.activation_collection import collect_activations
from integrations.hf_extraction import extract_activations
from integrations.hf_loading import load_model
from probes.catalogue import load_catalogue
from probes.external_data import SPLITS
from probes.length_control import length_matched
from probes.operating_points import auroc, threshold_at_fpr
from probes.traffic_whitening import whiten_direction
from scripts.demo_serve import PROMPTS as DEMO_PROMPTS
from scripts.external_validity import MODELS, external_activations, scored_sets
from scripts.refusal_length import DEPTHS, axis_at_depth

OTHER = {"dev": "final", "final": "dev"}
ROUNDS = 1000


def paired_delta(plain: AnchorZScorer, other: AnchorZScorer, pos: np.ndarray, neg: np.ndarray, seed: int = 0) -> list[float]:
    """95 % percentile-bootstrap interval of AUROC(other) - AUROC(plain) on the same resampled prompts."""
    a_pos, a_neg = plain.transform(pos)[:, 0], plain.transform(neg)[:, 0]
    b_pos, b_neg = other.transform(pos)[:, 0], other.transform(neg)[:, 0]
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(ROUNDS):
        i, j = rng.integers(0, len(pos), len(pos)), rng.integers(0, len(neg), len(neg))
        deltas.append(auroc(b_pos[i], b_neg[j]) - auroc(a_pos[i], a_neg[j]))
    return [round(float(q), 4) for q in np.quantile(deltas, [0.025, 0.975])]


def cell(scorer: AnchorZScorer, look, traffic, layer: int, demo: dict[int, np.ndarray]) -> dict:
    """Detection and flag-rate numbers of one scorer at one layer."""
    def z(x: dict[int, np.ndarray]) -> np.ndarray:
        return scorer.transform(x[layer])[:, 0]

    alike, everyday = z(look.neg), z(traffic.neg)
    return {**scored_cell(z(look.pos), alike, everyday, z(demo), look, traffic),
            "rho_length": round(float(spearmanr(np.r_[alike, everyday], np.r_[look.neg_len, traffic.neg_len])[0]), 3)}


def scored_cell(harm: np.ndarray, alike: np.ndarray, everyday: np.ndarray, demo: np.ndarray, look, traffic) -> dict:
    """AUROC vs look-alikes / everyday (and length-matched), flag rates at the threshold that flags 1 % of
    the everyday prompts, and the percentile of ``make demo``'s prompts among them, from the scores."""
    threshold = threshold_at_fpr(everyday, 0.01)
    return {
        "lookalike": round(auroc(harm, alike), 4),
        "lookalike_matched": length_matched(harm, alike, look.pos_len, look.neg_len)["auroc"],
        "traffic": round(auroc(harm, everyday), 4),
        "traffic_matched": length_matched(harm, everyday, traffic.pos_len, traffic.neg_len)["auroc"],
        "flag_harmful": round(float(np.mean(harm > threshold)), 4),
        "flag_lookalike": round(float(np.mean(alike > threshold)), 4),
        "demo_percentile": {k: round(float(np.mean(everyday < v)), 4) for k, v in zip(DEMO_PROMPTS, demo, strict=True)},
    }


def cell_columns(c: dict) -> list[str]:
    """A ``scored_cell`` as markdown columns: vs look-alikes, vs everyday (length-matched, and the paired
    interval when the cell has one), flags harmful / look-alike, demo percentiles."""
    ci = {k: f" [{lo:+.3f}, {hi:+.3f}]" for k, (lo, hi) in c.get("delta_ci", {}).items()}
    return [f"{c['lookalike']:.3f} ({c['lookalike_matched']}){ci.get('lookalike', '')}",
            f"{c['traffic']:.3f} ({c['traffic_matched']}){ci.get('traffic', '')}",
            f"{c['flag_harmful']:.1%} / {c['flag_lookalike']:.1%}",
            " / ".join(f"{p:.0%}" for p in c["demo_percentile"].values())]


def run(split: str, depths: list[float], ridges: list[float], models: str, sample: str = "everyday") -> dict:
    catalogue = load_catalogue()
    acts = [collect_activations(m, catalogue) for m in models.split(",")]
    sets = {s.name: s for s in scored_sets(split) if s.axis == "refusal"}
    whitening = next(s for s in scored_sets(OTHER[split]) if s.name.startswith("refusal_vs_traffic"))
    described = (f"everyday half not scored ({len(whitening.negative)} prompts)" if sample == "everyday" else
                 f"benign sides of the refusal catalogue's calibration pairs ({len(catalogue.calibration['refusal'])} prompts)")
    out: dict = {"split": split, "sample": sample, "whitening_sample": described,
                 "models": {}}
    for i, target in enumerate(acts):
        name = target.info.name
        ext = {e.name: e for e in external_activations(name, list(sets.values()), target.layers)}
        look, traffic = ext[f"refusal_vs_lookalike_{split}"], ext[f"refusal_vs_traffic_{split}"]
        benign = (external_activations(name, [whitening], target.layers)[0].neg if sample == "everyday"
                  else target.neg["refusal"])
        demo = extract_activations(load_model(name), list(DEMO_PROMPTS.values()), target.layers, cache=ActivationCache())
        rows = []
        for depth in depths:
            layer, base = axis_at_depth(acts, i, depth)
            anchors = target.anchors[layer].astype(np.float64)
            row = {"depth": depth, "layer": layer, "base": cell(base, look, traffic, layer, demo)}
            for ridge in ridges:
                w = whiten_direction(base.vectors[0], benign[layer], ridge)
                white = AnchorZScorer(w[None]).fit(anchors)
                row[f"ridge={ridge:g}"] = {
                    "cos_to_base": round(float(w @ base.vectors[0]), 3), **cell(white, look, traffic, layer, demo),
                    "delta_ci": {"lookalike": paired_delta(base, white, look.pos[layer], look.neg[layer]),
                                 "traffic": paired_delta(base, white, traffic.pos[layer], traffic.neg[layer])}}
            rows.append(row)
            click.echo(f"{name:>13} depth {depth:.3f} L{layer:<2} " + "  ".join(
                f"{k}: look {v['lookalike']:.3f} traffic {v['traffic']:.3f}" for k, v in row.items() if isinstance(v, dict)))
        out["models"][name] = rows
    return out


def kinds_view(models: str, depth: float = 0.625) -> None:
    """Per look-alike kind, plain vs whitened (on everyday half ``b``), DEV."""
    from scripts.refusal_variants import by_kind

    acts = [collect_activations(m, load_catalogue()) for m in models.split(",")]
    look = next(s for s in scored_sets("dev") if s.name == "refusal_vs_lookalike_dev")
    whitening = next(s for s in scored_sets("final") if s.name.startswith("refusal_vs_traffic"))
    for i, target in enumerate(acts):
        layer, base = axis_at_depth(acts, i, depth)
        prompts = external_activations(target.info.name, [look], [layer])[0]
        benign = external_activations(target.info.name, [whitening], [layer])[0].neg[layer]
        for label, vector in (("plain", base.vectors[0]), ("whitened", whiten_direction(base.vectors[0], benign, 1.0))):
            click.echo(f"-- {label}, depth {depth}")
            by_kind(prompts, layer, target, vector, "dev")


def in_sample_check(models: str, depths: list[float]) -> str:
    """Markdown: flag rates on everyday half ``b`` of thresholds set on half ``a``, plain vs whitened on ``a``."""
    from probes.external_data import benign_traffic

    catalogue = load_catalogue()
    acts = [collect_activations(m, catalogue) for m in models.split(",")]
    half_a, half_b = benign_traffic("a"), benign_traffic("b")
    lines = ["# Thresholds set on the prompts an axis was whitened on", "",
             "`python -m scripts.refusal_whitening --in-sample`: refusal axis (leave-one-family-out), thresholds at 1 % "
             "and 5 % of everyday half `a`, flag rate on half `b`; whitened = whitened on half `a` (ridge 1). "
             "sd = standard deviation of z on each half.", "",
             "| model | depth (layer) | axis | 1 %: on `a` -> on `b` | 5 %: on `a` -> on `b` | sd on `a` / `b` |",
             "|---|---|---|---|---|---|"]
    for i, target in enumerate(acts):
        hidden = extract_activations(load_model(target.info.name), half_a + half_b, target.layers, cache=ActivationCache())
        for depth in depths:
            layer, base = axis_at_depth(acts, i, depth)
            on_a, on_b = hidden[layer][:len(half_a)], hidden[layer][len(half_a):]
            for label, vector in (("plain", base.vectors[0]), ("whitened", whiten_direction(base.vectors[0], on_a, 1.0))):
                scorer = AnchorZScorer(vector[None]).fit(target.anchors[layer].astype(np.float64))
                za, zb = scorer.transform(on_a)[:, 0], scorer.transform(on_b)[:, 0]
                rates = [(np.mean(za > threshold_at_fpr(za, f)), np.mean(zb > threshold_at_fpr(za, f))) for f in (0.01, 0.05)]
                lines.append(f"| {target.info.name} | {depth:.3f} (L{layer}) | {label} | "
                             + " | ".join(f"{a:.1%} -> {b:.1%}" for a, b in rates) + f" | {za.std():.2f} / {zb.std():.2f} |")
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    lines = [f"# Refusal whitened against everyday traffic ({result['split'].upper()})", "",
             f"`python -m scripts.refusal_whitening --split {result['split']} --sample {result['sample']}`; whitening sample: "
             f"{result['whitening_sample']}. Cells: AUROC vs look-alikes (length-matched) / vs everyday (length-matched); "
             "rho = Spearman of z with token count on the benign prompts; flags = share of harmful / look-alike "
             "prompts above the threshold that flags 1 % of the scored everyday half; demo = percentile of `make demo`'s "
             "benign / pipe-bomb / jailbreak prompts among that half.", "",
             "Whitened rows give the paired-bootstrap 95 % interval of the AUROC change against the plain row in brackets.", "",
             "| model | depth (layer) | variant | vs look-alikes | vs everyday | rho | flags harmful / look-alike | demo |",
             "|---|---|---|---|---|---|---|---|"]
    for model, rows in result["models"].items():
        for row in rows:
            for variant, c in row.items():
                if isinstance(c, dict):
                    look, traffic, flags, demo = cell_columns(c)
                    lines.append(f"| {model} | {row['depth']:.3f} (L{row['layer']}) | {variant} | {look} | {traffic} | "
                                 f"{c['rho_length']:+.2f} | {flags} | {demo} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"])
    fig, axes = plt.subplots(2, len(models), figsize=(4 * len(models), 6), sharey=True, squeeze=False)
    for col, model in enumerate(models):
        rows = result["models"][model]
        variants = [k for k in rows[0] if isinstance(rows[0][k], dict)]
        for r, key in enumerate(("lookalike", "traffic")):
            ax = axes[r][col]
            for v in variants:
                ax.plot([row["depth"] for row in rows], [row[v][key] for row in rows], marker="o",
                        label=v, lw=2.5 if v == "base" else 1.2)
            ax.axhline(0.85, ls="--", c="grey", lw=0.8)
            ax.set_title(f"{model}: vs {'look-alikes' if key == 'lookalike' else 'everyday'}", fontsize=9)
            ax.set_xlabel("relative depth")
    axes[0][0].set_ylabel("AUROC")
    axes[1][0].set_ylabel("AUROC")
    axes[0][0].legend(fontsize=7)
    against = "everyday traffic" if result.get("sample", "everyday") == "everyday" else "the catalogue's benign sides"
    fig.suptitle(f"Refusal axis, plain vs whitened against {against} ({result['split'].upper()}, label-free)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@click.command()
@click.option("--split", type=click.Choice(SPLITS), default="dev", show_default=True)
@click.option("--depths", default=",".join(f"{d:.4g}" for d in DEPTHS), show_default=True)
@click.option("--ridges", default="0.1,1,10", show_default=True)
@click.option("--sample", type=click.Choice(["everyday", "catalogue_benign"]), default="everyday", show_default=True,
              help="What to whiten on (see module docstring).")
@click.option("--in-sample", is_flag=True, help="Only the in-sample threshold check (see module docstring).")
@click.option("--kinds", is_flag=True, help="Only the per-look-alike-kind view on DEV (see module docstring).")
@click.option("--models", default=MODELS, show_default=True)
@click.option("--out", default="bench/results/external", show_default=True)
def main(split: str, depths: str, ridges: str, sample: str, in_sample: bool, kinds: bool, models: str, out: str) -> None:
    if kinds:
        kinds_view(models)
        return
    if in_sample:
        text = in_sample_check(models, [0.25, 0.625])
        Path(out, "whitening_in_sample.md").write_text(text)
        click.echo(text)
        return
    result = run(split, [float(d) for d in depths.split(",")], [float(r) for r in ridges.split(",")], models, sample)
    stem = "whitening" if sample == "everyday" else f"whitening_{sample}"
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}_{split}.json").write_text(json.dumps(result, indent=1) + "\n")
    (folder / f"{stem}_{split}.md").write_text(markdown(result))
    if len(result["models"][next(iter(result["models"]))]) > 1:
        plot(result, folder / f"{stem}_{split}.png")
    click.echo(f"wrote {folder}/{stem}_{split}.*")


if __name__ == "__main__":
    main()
