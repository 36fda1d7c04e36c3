"""`axisguard calibrate`: canonical axes from two or more source models."""

from __future__ import annotations

import click
from rich.console import Console

from axisguard_cli.options import (
    axes_option,
    batch_option,
    data_option,
    engine_option,
    split_csv,
    template_option,
)


@click.command("calibrate")
@click.option("--source", "sources", multiple=True, required=True, help="Source model (zoo name or HF folder); repeat.")
@data_option
@axes_option
@engine_option
@template_option
@batch_option
@click.option("--per-axis-layers/--shared-layer", default=True, show_default=True,
              help="Read each axis at the source layers where the sources agree on it most (adapt then picks "
                   "each axis' target layer from anchors), or every axis at one shared layer.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle folder to write.")
def command(sources, data_dir, axes, engine, chat_template, batch_size, per_axis_layers, out) -> None:
    """Calibrate canonical behaviour axes in anchor coordinate space from source models."""
    from integrations.activation_collection import collect_activations
    from probes.calibration import build_bundle
    from probes.catalogue import load_catalogue

    console = Console(stderr=True)
    if len(sources) < 2:
        console.print("[yellow]warning:[/] one source gives no cross-family averaging; use two or more families")
    catalogue = load_catalogue(data_dir, split_csv(axes))
    acts = []
    for spec in sources:
        console.print(f"extracting [bold]{spec}[/] ({len(catalogue.anchors)} anchors, {len(catalogue.calibration)} axes)")
        acts.append(collect_activations(spec, catalogue, splits=("calibration",), use_chat_template=chat_template,
                                        engine=engine, batch_size=batch_size))
    bundle = build_bundle(acts, catalogue.axis_specs(), catalogue.anchors_sha256, per_axis_layers=per_axis_layers)
    bundle.catalogue_sha256 = catalogue.calibration_sha256
    path = bundle.save(out)
    layers = ", ".join(f"{s.name}@{s.layer}" for s in bundle.sources)
    console.print(f"wrote canonical bundle [bold]{path}[/]: {len(bundle.axes)} axes x {bundle.anchor_count} anchors, layers {layers}")
    for k, (name, agreement) in enumerate(bundle.diagnostics["source_agreement"].items()):
        at = "" if bundle.axis_source_layers is None else f"  layers {bundle.axis_source_layers[k]}"
        console.print(f"  {name:<20} cross-source agreement {agreement:+.3f}{at}")
