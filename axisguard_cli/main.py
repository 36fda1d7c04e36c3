"""`axisguard` entry point. Subcommands live one per module in this package and import heavy
dependencies lazily, so `axisguard --help` stays fast."""

from __future__ import annotations

import importlib
import sys

import click

from guard.errors import AxisguardError

# command name -> module in axisguard_cli that defines a click command or group named `command`.
COMMANDS = {
    "models": "models",
    "calibrate": "calibrate",
    "adapt": "adapt",
    "eval": "evaluate",
    "catalogue": "catalogue",
    "policy": "policy",
    "generate": "generate",
    "serve": "serve",
}


class GuardedGroup(click.Group):
    """Loads subcommands on demand and turns user errors into a message and exit code 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMANDS.get(cmd_name)
        if module_name is None:
            return None
        try:
            module = importlib.import_module(f"axisguard_cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"axisguard_cli.{module_name}":
                return None
            raise
        return module.command

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except AxisguardError as exc:
            click.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"  hint: {exc.hint}", err=True)
            sys.exit(2)


@click.group(cls=GuardedGroup)
@click.version_option(package_name="axisguard")
def cli() -> None:
    """axisguard: calibrate cross-family behaviour axes and guard served LLMs with them."""


if __name__ == "__main__":
    cli()
