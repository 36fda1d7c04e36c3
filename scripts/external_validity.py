"""External validity: do the catalogue's axes detect requests nobody here wrote? (issue #9)

Leave-one-family-out on the three zoo models. Sets (see ``probes/external_data.py``):
``dev`` (HarmBench val vs look-alikes dev) is the one catalogue work iterates on; ``final``
(StrongREJECT + HarmBench test vs look-alikes test) is scored once. Every run also scores every
axis on the catalogue's internal test split. Writes ``OUT/{tag}_{split}.json`` and ``.md``; with
``--plot`` a PNG comparing the runs found in OUT.

    python -m scripts.external_validity --split dev [--data DIR] [--tag after] [--out bench/results/external]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

from integrations.activation_cache import ActivationCache
from integrations.activation_collection import collect_activations
from integrations.hf_extraction import Pooling, extract_activations
from integrations.hf_loading import load_model
from probes.catalogue import load_catalogue
from probes.external_data import SPLITS, external_sets
from probes.external_eval import PromptSet, evaluate_external

MODELS = "smollm2-135m,gemma3-270m,qwen2.5-0.5b"
# Jailbreak-framed prompts are long; a fixed stride keeps the FINAL set's extraction affordable.
MAX_JAILBREAK_REQUESTS = 60
HEADLINE = ("one_layer/native", "one_layer/reconstructed", "one_layer/acs_probe",
            "per_axis/native", "per_axis/reconstructed", "per_axis/acs_probe", "per_axis_top3/reconstructed")


def scored_sets(split: str):
    """The split's external sets as scored here (the jailbreak set thinned to ``MAX_JAILBREAK_REQUESTS``)."""
    out = []
    for s in external_sets(split):
        if s.axis == "jailbreak" and len(s.positive) > MAX_JAILBREAK_REQUESTS:
            stride = -(-len(s.positive) // MAX_JAILBREAK_REQUESTS)
            s = type(s)(s.name, s.axis, s.positive[::stride], s.negative[::stride], s.description + f" (every {stride}th request)")
        out.append(s)
    return out


def external_activations(model: str, sets, layers: list[int], pooling: Pooling = "last") -> list[PromptSet]:
    """``model``'s pooled activations of every set's prompts at ``layers`` (extracted once, cached)."""
    prompts = list(dict.fromkeys(p for s in sets for p in s.positive + s.negative))
    loaded = load_model(model)
    acts = extract_activations(loaded, prompts, layers, pooling=pooling, cache=ActivationCache())
    # the user's text in tokens, without the chat template (probes.length_control)
    tokens = np.array([len(ids) for ids in loaded.tokenizer(prompts, add_special_tokens=False)["input_ids"]])
    where = {p: i for i, p in enumerate(prompts)}

    def take(texts):
        idx = [where[t] for t in texts]
        return {layer: acts[layer][idx] for layer in layers}

    def count(texts):
        return tokens[[where[t] for t in texts]]

    return [PromptSet(s.name, s.axis, take(s.positive), take(s.negative), count(s.positive), count(s.negative))
            for s in sets]


def _cell(row: dict) -> str:
    points = {p["fpr"]: p for p in row.get("tpr_at_fpr", [])}
    out = f"{row['auroc']:.3f}"
    if row.get("auroc_ci"):
        out += f" [{row['auroc_ci'][0]:.2f}, {row['auroc_ci'][1]:.2f}]"
    for fpr in (0.01, 0.05):
        if fpr in points:
            p = points[fpr]
            out += f"<br>TPR@{fpr:.0%} {p['tpr']:.2f} [{p['low']:.2f}, {p['high']:.2f}]"
    matched = row.get("length_matched")
    if matched and matched["auroc"] is not None:
        out += f"<br>length-matched {matched['auroc']:.3f} ({matched['n_pairs']} pairs)"
    return out


def markdown(results: dict, title: str) -> str:
    models = list(results)
    lines = [f"# {title}", ""]
    ext = [n for n in results[models[0]]["sets"] if not n.endswith("_internal_test")]
    for name in ext:
        first = results[models[0]]["sets"][name]["scores"]["one_layer/native"]
        lines += [f"## {name} ({first['n_pos']} pos / {first['n_neg']} neg)", "",
                  "AUROC [bootstrap 95 %], TPR at 1 % / 5 % FPR [bootstrap 95 %], AUROC on a length-matched "
                  "subsample (probes/length_control.py).", "",
                  "| scorer | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        for key in HEADLINE:
            lines.append(f"| {key} | " + " | ".join(_cell(results[m]["sets"][name]["scores"][key]) for m in models) + " |")
        if all("length_only" in results[m]["sets"][name] for m in models):
            lines.append("| token count alone (baseline) | " + " | ".join(
                f"{results[m]['sets'][name]['length_only']:.3f}" for m in models) + " |")
        lines.append("| native AUROC by layer (diagnostic) | " + " | ".join(
            ", ".join(f"{k}: {v:.2f}" for k, v in results[m]["sets"][name]["native_by_layer"].items()) for m in models) + " |")
        lines.append("")
    axes = [n for n in results[models[0]]["sets"] if n.endswith("_internal_test")]
    lines += ["## Internal test split (catalogue test pairs), AUROC", "",
              "| axis | " + " | ".join(f"{m} {k.split('/')[0]} {k.split('/')[1]}" for m in models for k in
                                        ("one_layer/reconstructed", "per_axis/reconstructed", "one_layer/native", "one_layer/acs_probe")) + " |",
              "|---|" + "---|" * (4 * len(models))]
    for name in axes:
        cells = [f"{results[m]['sets'][name]['scores'][k]['auroc']:.3f}" for m in models for k in
                 ("one_layer/reconstructed", "per_axis/reconstructed", "one_layer/native", "one_layer/acs_probe")]
        lines.append(f"| {name.removesuffix('_internal_test')} | " + " | ".join(cells) + " |")
    lines += ["", "## Layers (label-free)", ""]
    for m in models:
        lay = results[m]["layers"]
        per = ", ".join(f"{a} {v[0]['target']}" for a, v in lay["per_axis"].items())
        lines.append(f"- `{m}`: one layer {lay['one_layer']} (sources {lay['one_layer_sources']}); per axis: {per}")
    return "\n".join(lines) + "\n"


def summary_section(folder: str | Path = "bench/results/external") -> list[str]:
    """Markdown lines for probes/REPORT.md: the refusal/jailbreak external AUROCs of every run in ``folder``."""
    folder = Path(folder)
    runs = sorted(p for p in folder.glob("*_*.json") if p.stem.split("_")[-1] in SPLITS)
    if not runs:
        return ["No external-validity run yet: `make external`."]
    keys = ("one_layer/native", "one_layer/reconstructed", "one_layer/acs_probe", "per_axis/native",
            "per_axis/reconstructed", "per_axis/acs_probe")
    lines = ["| run | set | model | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for path in runs:
        res = json.loads(path.read_text())["results"]
        for model, body in res.items():
            for name, entry in body["sets"].items():
                if name.endswith("_internal_test") and entry["axis"] not in ("refusal", "jailbreak"):
                    continue
                cells = " | ".join(f"{entry['scores'][k]['auroc']:.3f}" for k in keys)
                lines.append(f"| {path.stem} | {name} | {model} | {cells} |")
    return lines


RUN_ORDER = ("before", "after", "depth", "round3", "length")  # the committed runs, oldest first; other tags follow


def plot(out: Path) -> Path:
    """Refusal harmful vs look-alike per run: one row per split, one column per run (oldest first)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in out.glob("*_*.json") if r.stem.split("_")[-1] in SPLITS]
    tags = sorted({r.stem.rsplit("_", 1)[0] for r in runs},
                  key=lambda t: (RUN_ORDER.index(t) if t in RUN_ORDER else len(RUN_ORDER), t))
    splits = [s for s in SPLITS if any(r.stem.endswith(f"_{s}") for r in runs)]
    fig, axes = plt.subplots(max(len(splits), 1), max(len(tags), 1), figsize=(4.2 * max(len(tags), 1), 3.6 * max(len(splits), 1)),
                             squeeze=False, sharey=True)
    keys = ("one_layer/native", "one_layer/reconstructed", "per_axis/reconstructed", "per_axis/acs_probe")
    width = 0.8 / len(keys)
    for row, split in enumerate(splits):
        for col, tag in enumerate(tags):
            ax, path = axes[row][col], out / f"{tag}_{split}.json"
            ax.set_title(f"{tag}, {split}: harmful vs look-alike", fontsize=9)
            if not path.is_file():
                ax.axis("off")
                continue
            res = json.loads(path.read_text())["results"]
            models = list(res)
            name = next(n for n in res[models[0]]["sets"] if n.startswith("refusal_vs_lookalike"))
            for j, key in enumerate(keys):
                vals = [res[m]["sets"][name]["scores"][key]["auroc"] for m in models]
                ax.bar(np.arange(len(models)) + j * width, vals, width, label=key)
            ax.axhline(0.85, color="k", ls="--", lw=1)
            ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2, models, fontsize=8)
            ax.set_ylim(0.4, 1.0)
        axes[row][0].set_ylabel("AUROC (leave-one-family-out)")
    handles, labels = next((a.get_legend_handles_labels() for a in axes.flat if a.get_legend_handles_labels()[0]), ([], []))
    fig.legend(handles, labels, loc="lower center", ncol=len(keys), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    png = out / "external_refusal_auroc.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


@click.command()
@click.option("--split", type=click.Choice(SPLITS), default="dev", show_default=True)
@click.option("--data", default=None, help="catalogue directory (default: the built-in one)")
@click.option("--tag", default="latest", show_default=True,
              help="run name; the committed runs (before, after, depth, round3, length) are history: pick a new one")
@click.option("--models", default=MODELS, show_default=True)
@click.option("--out", default="bench/results/external", show_default=True)
@click.option("--plot/--no-plot", "with_plot", default=True)
@click.option("--threads", type=int, default=0, help="torch CPU threads (0: torch's default); 1 is far faster on a shared box")
@click.option("--internal-axes", default="", help="comma list: score only these axes' internal test split (default: all)")
@click.option("--targets", default="", help="comma list: held-out targets to score (default: every model)")
def main(split: str, data: str | None, tag: str, models: str, out: str, with_plot: bool, threads: int,
         internal_axes: str, targets: str) -> None:
    started = time.time()
    if threads:
        import torch

        torch.set_num_threads(threads)
    catalogue = load_catalogue(data)
    if internal_axes:
        catalogue.test = {a: catalogue.test[a] for a in internal_axes.split(",")}
    sets = scored_sets(split)
    acts, external = [], {}
    for name in models.split(","):
        click.echo(f"[{time.time() - started:6.0f}s] {name}: catalogue activations", err=True)
        model_acts = collect_activations(name, catalogue)
        if not targets or name in targets.split(","):
            click.echo(f"[{time.time() - started:6.0f}s] {name}: external activations", err=True)
            external[name] = external_activations(name, sets, model_acts.layers)
        acts.append(model_acts)
    click.echo(f"[{time.time() - started:6.0f}s] scoring", err=True)
    results = evaluate_external(acts, external, catalogue.axis_specs(), catalogue.anchors_sha256)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"split": split, "tag": tag, "catalogue": str(data or "built-in"),
           "sets": {s.name: {"axis": s.axis, "n_pos": len(s.positive), "n_neg": len(s.negative), "description": s.description}
                    for s in sets},
           "internal_axes": sorted(catalogue.test),
           "pairs": {a: {"calibration": len(catalogue.calibration[a]), "test": len(catalogue.test.get(a, []))}
                     for a in catalogue.axis_names},
           "results": results}
    (folder / f"{tag}_{split}.json").write_text(json.dumps(doc, indent=1) + "\n")
    text = markdown(results, f"External validity: {tag}, {split} split")
    (folder / f"{tag}_{split}.md").write_text(text)
    if with_plot:
        click.echo(f"plot: {plot(folder)}", err=True)
    click.echo(text)
    click.echo(f"[{time.time() - started:6.0f}s] done", err=True)


if __name__ == "__main__":
    main()
