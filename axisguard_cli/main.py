"""`axisguard` entry point. Subcommands live one per module in this package and import heavy
dependencies lazily, so `axisguard --help` stays fast."""

from __future__ import annotations

import importlib
import sys
from typing import NoReturn

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
    "thresholds": "thresholds",
}


# Modules that come with an extra, not with the core install (see pyproject.toml).
EXTRA_OF_MODULE = {"sklearn": "calibrate", "gguf": "calibrate", "accelerate": "calibrate", "rich": "calibrate",
                   "tqdm": "calibrate", "matplotlib": "report", "vllm": "vllm"}


def missing_extra(exc: ModuleNotFoundError) -> AxisguardError | None:
    """A user error for a command whose optional dependency is not installed (None: a real bug)."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return AxisguardError(f"this command needs {top!r}, which the core install leaves out",
                          f"pip install 'axisguard[{extra}]'")


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

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            error = missing_extra(exc)
            if error is None:
                raise
            self._fail(error)
        except AxisguardError as exc:
            self._fail(exc)

    @staticmethod
    def _fail(exc: AxisguardError) -> NoReturn:
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
