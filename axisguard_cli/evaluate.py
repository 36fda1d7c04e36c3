"""`axisguard eval`: leave-one-family-out evaluation with tables and plots."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from axisguard_cli.options import (
    axes_option,
    batch_option,
    data_option,
    engine_option,
    split_csv,
    template_option,
)


@click.command("eval")
@click.option("--models", required=True, help="Comma-separated models; each in turn is the held-out target.")
@data_option
@click.option("--test-data", type=click.Path(file_okay=False), default=None,
              help="Directory with {axis}_test.jsonl (or axes/{axis}_test.jsonl). Default: the data's test split, "
                   "or a seeded 30% hold-out of its calibration pairs.")
@axes_option
@engine_option
@template_option
@batch_option
@click.option("--seed", default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for results and plots.")
def command(models, data_dir, test_data, axes, engine, chat_template, batch_size, seed, out) -> None:
    """Leave-one-family-out: calibrate on the others, adapt to the held-out model, score its test pairs."""
    from guard.errors import AxisguardError
    from integrations.activation_collection import collect_activations
    from probes.catalogue import load_catalogue, load_test_pairs
    from probes.eval_report import summary_by_method, write_report
    from probes.evaluation import MIN_MULTICLASS_AXES, evaluate_lofo
    from probes.splits import holdout_split

    console = Console(stderr=True)
    names = split_csv(models) or []
    if len(names) < 2:
        raise AxisguardError("eval needs at least two models", "pass --models A,B[,C...]")
    catalogue = load_catalogue(data_dir, split_csv(axes))
    if test_data is not None:
        catalogue.test = load_test_pairs(test_data, catalogue.axis_names)
        split_note = f"test pairs from {test_data}"
    elif catalogue.test:
        split_note = "the data's own test split"
    else:
        catalogue = holdout_split(catalogue, 0.3, seed)
        split_note = f"seeded 30% hold-out of calibration pairs (seed {seed})"
    missing = [a for a in catalogue.axis_names if a not in catalogue.test]
    if missing:
        raise AxisguardError(f"no test pairs for axes {', '.join(missing)}", "add {axis}_test.jsonl or drop those axes with --axes")
    console.print(f"evaluating {len(names)} models on {len(catalogue.axis_names)} axes; {split_note}")
    if len(catalogue.axis_names) < MIN_MULTICLASS_AXES:
        console.print("one axis: the K-way (which axis?) accuracy is skipped (n/a); pass two or more axes "
                      "with --axes to get it")
    acts = [collect_activations(m, catalogue, use_chat_template=chat_template, engine=engine, batch_size=batch_size)
            for m in names]
    results, details = evaluate_lofo(acts, catalogue.axis_specs(), catalogue.anchors_sha256, seed)
    results["split"] = split_note
    results["data"] = str(catalogue.root)
    written = write_report(out, results, details, acts)
    table = Table(title="leave-one-family-out (mean over held-out targets)")
    table.add_column("method")
    table.add_column("10-way acc", justify="right")
    table.add_column("mean AUROC", justify="right")
    table.add_column("TPR @ 1% FPR", justify="right")
    table.add_column("TPR @ 5% FPR", justify="right")
    for method, row in summary_by_method(results).items():
        accuracy = row["multiclass_accuracy"]
        table.add_row(method, "n/a" if accuracy is None else f"{accuracy:.3f}", f"{row['mean_auroc']:.3f}",
                      f"{row['tpr_at_1pct_fpr']:.3f}", f"{row['tpr_at_5pct_fpr']:.3f}")
    Console().print(table)
    console.print("wrote " + ", ".join(str(p) for p in written))
