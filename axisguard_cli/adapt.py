"""`axisguard adapt`: reconstruct a bundle's axes for a target model from its anchors alone."""

from __future__ import annotations

import click
from rich.console import Console

from axisguard_cli.options import batch_option, data_option, engine_option, template_option


@click.command("adapt")
@click.argument("bundle_dir", type=click.Path(file_okay=False))
@click.option("--target", required=True, help="Target model (zoo name or HF folder).")
@data_option
@click.option("--method", type=click.Choice(["ridge", "adjoint"]), default="ridge", show_default=True)
@click.option("--layer", type=int, default=None,
              help="One layer for every axis (default: chosen from anchors by CKA, per axis if the bundle has per-axis layers).")
@click.option("--pairs", "pairs_dir", type=click.Path(file_okay=False), default=None,
              help="Few-shot: labelled target pairs, axes/{axis}_anchor.jsonl (paper layout); the first --shots "
                   "pairs per axis refine the anchors-only axis (shrinkage toward it, weight by CV on the shots, one-SE rule). "
                   "Use pairs like your traffic and check the pack on held-out data: CV only sees the shots' kind.")
@click.option("--shots", type=click.IntRange(0), default=None, help="Pairs per axis to use from --pairs (default: all).")
@click.option("--whiten-with", "whiten_file", default=None,
              help="Ordinary prompts (one per line or JSONL with 'text'; 'builtin' = the built-in benign sample): "
                   "whiten --whiten-axes against their covariance (label-free; takes out what everyday prompts vary "
                   "along, length above all). Measured: helps at deep read layers, hurts at 1/4 depth "
                   "(bench/results/external/README.md).")
@click.option("--whiten-axes", default="refusal", show_default=True, help="Comma-separated axes to whiten.")
@click.option("--whiten-ridge", type=click.FloatRange(0.0, min_open=True), default=1.0, show_default=True,
              help="Ridge added to the covariance, in units of its mean eigenvalue (larger = closer to the plain axis).")
@engine_option
@template_option
@batch_option
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Axis pack folder to write.")
def command(bundle_dir, target, data_dir, method, layer, pairs_dir, shots, whiten_file, whiten_axes, whiten_ridge,
            engine, chat_template, batch_size, out) -> None:
    """Build an axis pack for TARGET: anchors only, no labels, no fine-tuning (unless --pairs gives a few)."""
    from guard.bundle import CanonicalBundle
    from guard.errors import AxisguardError, MismatchError
    from guard.tensor_folder import MANIFEST
    from integrations.activation_collection import collect_activations
    from probes.calibration import adapt_pack
    from probes.catalogue import load_catalogue

    console = Console(stderr=True)
    bundle = CanonicalBundle.load(bundle_dir)
    catalogue = load_catalogue(data_dir, bundle.axis_names)
    if catalogue.anchors_sha256 != bundle.anchors_sha256:
        raise MismatchError(
            f"the anchors in {catalogue.root} (sha256 {catalogue.anchors_sha256[:12]}…) are not the bundle's "
            f"anchor pool (sha256 {bundle.anchors_sha256[:12]}…)",
            "pass the same --data directory the bundle was calibrated with",
        )
    import json
    from pathlib import Path

    bundle_sha = json.loads((Path(bundle_dir) / MANIFEST).read_text())["manifest_sha256"]
    if pairs_dir is not None:
        from probes.catalogue import load_shot_pairs

        catalogue.calibration = load_shot_pairs(pairs_dir, bundle.axis_names, shots)
    whiten = [a.strip() for a in whiten_axes.split(",") if a.strip()] if whiten_file else []
    unknown = [a for a in whiten if a not in bundle.axis_names]
    if unknown:
        raise AxisguardError(f"--whiten-axes names {', '.join(unknown)}, not in the bundle",
                             f"choose from: {', '.join(bundle.axis_names)}")
    ordinary: list[str] = []
    if whiten_file:
        from axisguard_cli.generate import read_prompts
        from probes.catalogue import BENIGN_TRAFFIC
        from probes.traffic_whitening import require_enough_prompts

        ordinary = read_prompts(BENIGN_TRAFFIC if whiten_file == "builtin" else whiten_file)
        require_enough_prompts(len(ordinary))  # before the model runs
    acts = collect_activations(target, catalogue, layers=[layer] if layer is not None else None,
                               anchors_only=pairs_dir is None, splits=("calibration",), engine=engine,
                               use_chat_template=chat_template, batch_size=batch_size, extra_prompts=ordinary)
    info = acts.info
    pack = adapt_pack(bundle, acts.anchors, info.at_layer(acts.layers[0]),
                      method=method, layer=layer, bundle_sha256=bundle_sha)
    if pairs_dir is not None:
        from probes.few_shot import refine_pack

        at = {a: pack.layers_by_axis[pack.axis_index(a)] for a in catalogue.calibration}
        pack = refine_pack(pack, {a: (acts.pos[a][at[a]], acts.neg[a][at[a]]) for a in at}, acts.anchors)
        for axis, r in pack.diagnostics["few_shot"].items():
            console.print(f"  few-shot {axis:<18} {r['shots']} pairs, weight on the shots {r['weight']:.1f} "
                          f"(CV AUROC {r['cv_auroc']})")
    if whiten:
        from probes.traffic_whitening import whiten_pack

        pack = whiten_pack(pack, whiten, acts.extra, acts.anchors, whiten_ridge, prompts=ordinary)
        for axis, r in pack.diagnostics["traffic_whitening"].items():
            console.print(f"  whitened {axis:<18} against {r['prompts']} ordinary prompts at layer {r['layer']} "
                          f"(ridge {r['ridge']:g}; cosine to the plain axis {r['cos_to_plain']:.2f})")
    path = pack.save(out)
    where = f"layers {pack.score_layers}" if pack.per_axis_layers else f"layer {pack.layer}"
    console.print(f"wrote axis pack [bold]{path}[/] for {info.name} at {where} ({method}); "
                  f"{pack.diagnostics['layer_choice']['reason']}")
    for name, fid in pack.diagnostics["fidelity_back_projection"].items():
        console.print(f"  {name:<20} layer {pack.layers_by_axis[pack.axis_index(name)]:>3}  back-projection fidelity {fid:.3f}")
