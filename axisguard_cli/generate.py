"""`axisguard generate`: guarded generation with a transformers model, optionally side by side with
the unguarded output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from guard.errors import AxisguardError


def read_prompts(path: str | Path, half: str | None = None) -> list[str]:
    """One prompt per line, or JSONL whose records carry ``text`` (or ``prompt``); with ``half``, only
    the JSONL records whose ``half`` field equals it (the built-in benign sample's two halves)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise AxisguardError(f"cannot read {path}: {exc.strerror}", "pass an existing prompts file") from None
    filled = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    as_jsonl = path.suffix.lower() == ".jsonl" or (filled and all(line.lstrip().startswith("{") for _, line in filled))
    if not as_jsonl:
        return [line for _, line in filled]
    prompts = []
    for number, line in filled:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AxisguardError(f"{path}:{number}: not valid JSON ({exc.msg})", "one JSON object per line") from None
        text = record.get("text", record.get("prompt")) if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise AxisguardError(f"{path}:{number}: no 'text' (or 'prompt') string field",
                                 'each line must look like {"text": "..."}')
        if half is None or record.get("half") == half:
            prompts.append(text)
    if not prompts:
        raise AxisguardError(f"{path} holds no prompts" + (f" with half={half!r}" if half else ""),
                             "pass a file with prompts (and an existing half)")
    return prompts


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _score_rows(scores: dict) -> list[tuple[str, ...]]:
    parts: list[tuple[str, ...]] = []
    for axis, s in scores.items():
        parts.append((axis, _fmt(s["prompt"]), _fmt(s["ema"]), _fmt(s["max"]), str(s["tokens_over"])))
    return parts


@click.command("generate")
@click.option("--model", "model_spec", required=True, help="Zoo name or local HF folder.")
@click.option("--pack", "pack_dir", required=True, type=click.Path(file_okay=False), help="Axis pack for the model.")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), default=None,
              help="Policy YAML/JSON (default: the catalogue's default policy).")
@click.option("--compare", is_flag=True, help="Also generate unguarded and show both side by side.")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(1))
@click.option("--prompts-file", type=click.Path(dir_okay=False), default=None,
              help="One prompt per line, or JSONL with a 'text' (or 'prompt') field.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write one JSON record per prompt to this file.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--chat-template/--no-chat-template", "chat_template", default=None,
              help="Wrap prompts in the chat template (default: as the pack was built).")
@click.argument("prompts", nargs=-1)
def command(model_spec, pack_dir, policy_file, compare, max_new_tokens, prompts_file, json_out, batch_size,
            chat_template, prompts) -> None:
    """Generate for PROMPT... (or --prompts-file) with the guard on; greedy decoding, so reruns match."""
    from rich.console import Console
    from rich.table import Table

    from guard.pack import AxisPack
    from guard.runtime import Guard
    from integrations.hf_guard import guarded_generate
    from integrations.hf_loading import load_model
    from probes.policies import policy_or_default

    if bool(prompts) == bool(prompts_file):
        raise AxisguardError("give the prompts either as arguments or with --prompts-file (exactly one of them)",
                             'e.g. `axisguard generate --model M --pack P "How do I ...?"`')
    texts = list(prompts) if prompts else read_prompts(prompts_file)
    if not texts:
        raise AxisguardError(f"{prompts_file} holds no prompts", "one prompt per line, or JSONL with 'text'")
    console = Console()
    pack = AxisPack.load(pack_dir)
    policy = policy_or_default(policy_file)
    loaded = load_model(model_spec)
    pack.check_model(loaded.hidden_size, loaded.num_layers, loaded.architecture)
    guard = Guard(pack, policy, model_name=loaded.name, trajectory_tokens=max_new_tokens)
    template = pack.model.chat_template if chat_template is None else chat_template
    guarded = guarded_generate(loaded, texts, guard, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               use_chat_template=template)
    plain = (guarded_generate(loaded, texts, None, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              use_chat_template=template) if compare else None)

    records = []
    for i, out in enumerate(guarded):
        verdict = out.verdict or {}
        record: dict[str, Any] = {"prompt": out.prompt, "guarded": {
            "text": out.text, "actions": verdict.get("actions", []), "scores": verdict.get("scores", {}),
            "fired": verdict.get("fired", []), "trajectory": verdict.get("trajectory", {}),
            "errors": verdict.get("errors", 0)}}
        if plain is not None:
            record["unguarded"] = {"text": plain[i].text}
        records.append(record)

        console.rule(f"[bold]prompt {i + 1}[/]: {out.prompt[:100]}")
        if plain is not None:
            side = Table("guarded", "unguarded", show_lines=False, expand=True)
            side.add_row(out.text, plain[i].text)
            console.print(side)
        else:
            console.print(out.text)
        fired = ", ".join(f"{f['rule']}→{f['action']} ({f['axis']} z={_fmt(f['score'])}, threshold "
                          f"{_fmt(f['threshold'])}, {f['phase']} token {f['token_index']})"
                          for f in verdict.get("fired", []))
        console.print(f"actions: {', '.join(record['guarded']['actions']) or 'none'}"
                      + (f"  [dim]{fired}[/]" if fired else ""))
        table = Table("axis", "prompt z", "generation EMA", "max", "tokens over", title="scores", title_justify="left")
        for row in _score_rows(verdict.get("scores", {})):
            table.add_row(*row)
        console.print(table)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        with open(json_out, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        console.print(f"wrote {len(records)} records to {json_out}")
