"""`axisguard policy`: validate a guard policy (alone or against an axis pack), print the default one."""

from __future__ import annotations

import json
import sys
from typing import Any

import click


@click.group("policy")
def command() -> None:
    """Guard policies: rules that turn axis scores into observe / flag / steer / stop."""


@command.command("check")
@click.argument("policy_file", type=click.Path(dir_okay=False))
@click.option("--pack", "pack_dir", type=click.Path(file_okay=False), default=None,
              help="Axis pack to check the rules against (axes, layers, thresholds).")
@click.option("--strict", is_flag=True, help="Treat warnings (e.g. skipped rules) as errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check(policy_file: str, pack_dir: str | None, strict: bool, as_json: bool) -> None:
    """Validate POLICY_FILE (YAML or JSON); exit 1 if the guard would refuse it (or warns, with --strict)."""
    from rich.console import Console
    from rich.table import Table

    from guard.policy import load_policy
    from guard.policy_check import check_against_pack

    policy = load_policy(policy_file)  # schema errors: AxisguardError -> exit 2 with field/value/allowed
    result: dict[str, Any] = {"policy": policy.name, "file": policy_file, "rules": len(policy.rules), "errors": [], "warnings": [],
              "active": [], "skipped": []}
    rows = []
    if pack_dir is not None:
        from guard.pack import AxisPack

        pack = AxisPack.load(pack_dir)
        report = check_against_pack(policy, pack)
        result.update(pack=pack.model.name, errors=report.errors, warnings=report.warnings, skipped=report.skipped,
                      active=[r.rule.name for r in report.resolved])
        for r in report.resolved:
            steer = r.rule.steer
            how = ""
            if r.rule.action == "steer" and steer is not None and r.steer_axis_index is not None:
                how = f"{steer.method} {pack.axis_names[r.steer_axis_index]} @ {list(r.steer_layers)}"
                if r.clamp_target_z is not None:
                    how += f" to z={r.clamp_target_z:.2f}"
            rows.append((r.rule.name, r.rule.axis, r.rule.score, f"{r.threshold:.2f}", r.rule.action, how))
    else:
        result["active"] = [r.name for r in policy.rules]
    failed = bool(result["errors"]) or (strict and bool(result["warnings"]))
    result["ok"] = not failed
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        console = Console()
        target = f" against the pack for {result['pack']}" if "pack" in result else " (schema only; pass --pack)"
        console.print(f"policy [bold]{policy.name}[/] ({policy_file}): {len(policy.rules)} rules{target}")
        if rows:
            table = Table("rule", "axis", "score", "threshold (z)", "action", "steering")
            for row in rows:
                table.add_row(*row)
            console.print(table)
        for message in result["errors"]:
            console.print(f"[red]error[/]: {message}")
        for message in result["warnings"]:
            console.print(f"[yellow]warning[/]: {message}")
        console.print("[red]FAILED[/]" if failed else "[green]OK[/]")
    if failed:
        sys.exit(1)


@command.command("default")
def show_default() -> None:
    """Print the default policy shipped with the built-in catalogue (a starting point to edit)."""
    from probes.policies import default_policy_text

    click.echo(default_policy_text(), nl=False)
