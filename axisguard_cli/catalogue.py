"""`axisguard catalogue`: list the behaviour catalogue's axes, or export it in the paper's layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import click

from probes.catalogue import Catalogue, export_catalogue, load_catalogue

DATA_HELP = "a data directory in the paper's layout (anchors.jsonl + axes/); default: the built-in catalogue"


def catalogue_summary(catalogue: Catalogue) -> dict[str, Any]:
    """What the listing shows, as plain JSON: anchors and, per axis, labels and pair counts per split."""
    axes = []
    for name, pairs in catalogue.calibration.items():
        card = catalogue.cards.get(name, {})
        axes.append(
            {
                "name": name,
                "title": card.get("title", ""),
                "pos_label": pairs[0].pos_label,
                "neg_label": pairs[0].neg_label,
                "calibration": len(pairs),
                "test": len(catalogue.test.get(name, [])),
                "card": name in catalogue.cards,
            }
        )
    return {
        "root": str(catalogue.root),
        "anchors": {"count": len(catalogue.anchors), "sha256": catalogue.anchors_sha256},
        "calibration_sha256": catalogue.calibration_sha256,
        "axes": axes,
    }


def _print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="axisguard behaviour catalogue")
    columns: list[tuple[str, Literal["left", "right"]]] = [
        ("axis", "left"), ("positive", "left"), ("negative", "left"), ("calibration", "right"), ("test", "right"),
        ("title", "left")]
    for column, justify in columns:
        table.add_column(column, justify=justify)
    for axis in summary["axes"]:
        table.add_row(axis["name"], axis["pos_label"], axis["neg_label"], str(axis["calibration"]),
                      str(axis["test"]), axis["title"] or "[dim](no card)[/dim]")
    anchors = summary["anchors"]
    table.caption = f"{anchors['count']} anchors (sha256 {anchors['sha256'][:12]}) from {summary['root']}"
    Console().print(table)


@click.group(invoke_without_command=True)
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None, help=DATA_HELP)
@click.option("--json", "as_json", is_flag=True, help="print the listing as JSON")
@click.pass_context
def command(ctx: click.Context, data_dir: Path | None, as_json: bool) -> None:
    """List the behaviour catalogue's axes with their labels and pair counts per split.

    Without a subcommand, prints the listing; `export DEST` writes the catalogue to a directory.
    """
    ctx.ensure_object(dict)
    ctx.obj["data_dir"] = data_dir
    if ctx.invoked_subcommand is not None:
        return
    summary = catalogue_summary(load_catalogue(data_dir))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        _print_table(summary)


@command.command("export")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None, help=DATA_HELP)
@click.option("--axis", "axes", multiple=True, help="export only this axis (repeatable); default: all")
@click.option("--force", is_flag=True, help="replace files that already exist in DEST")
@click.pass_context
def export(ctx: click.Context, dest: Path, data_dir: Path | None, axes: tuple[str, ...], force: bool) -> None:
    """Write the catalogue to DEST in the paper's layout.

    DEST gets anchors.jsonl, axes/{axis}_anchor.jsonl (calibration pairs), axes/{axis}_test.jsonl (test
    pairs) and cards/{axis}.json; loading DEST gives back the same catalogue.
    """
    source = data_dir if data_dir is not None else ctx.obj.get("data_dir")
    catalogue = load_catalogue(source, axes=list(axes) or None)
    written = export_catalogue(catalogue, dest, overwrite=force)
    click.echo(
        f"wrote {len(catalogue.anchors)} anchors and {len(catalogue.calibration)} axes "
        f"({len(written)} files) to {dest}"
    )
