"""Options and helpers shared by the calibration subcommands."""

from __future__ import annotations

import click

from guard.errors import AxisguardError

data_option = click.option(
    "--data", "data_dir", type=click.Path(file_okay=False), default=None,
    help="Data directory in the paper's layout (anchors.jsonl, axes/{axis}_anchor.jsonl). Default: built-in catalogue.",
)
axes_option = click.option("--axes", default=None, help="Comma-separated axis names (default: all in the data).")
engine_option = click.option(
    "--engine", type=click.Choice(["transformers", "vllm"]), default="transformers", show_default=True,
    help="How to extract activations; vllm uses the same hooks as the serving plugin.",
)
template_option = click.option(
    "--chat-template/--no-chat-template", "chat_template", default=None,
    help="Wrap prompts in the model's chat template (default: the model's zoo setting; on when it has one).",
)
batch_option = click.option("--batch-size", default=8, show_default=True, help="Prompts per forward pass.")


def split_csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise AxisguardError(f"empty list {value!r}", "pass comma-separated names")
    return items
