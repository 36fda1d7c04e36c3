"""`axisguard thresholds`: set a policy's rule thresholds so each flags a chosen fraction of the
operator's own ordinary (unlabelled) prompts; optional positives report the recall that buys."""

from __future__ import annotations

import json
from pathlib import Path

import click

from guard.errors import AxisguardError


@click.command("thresholds")
@click.option("--model", "model_spec", required=True, help="Zoo name or local HF folder.")
@click.option("--pack", "pack_dir", required=True, type=click.Path(file_okay=False), help="Axis pack for the model.")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="Ordinary prompts, one per line or JSONL with 'text' (default: the built-in benign sample).")
@click.option("--half", type=click.Choice(["a", "b"]), default=None,
              help="Use only this half of a JSONL sample with a 'half' field (the built-in one has two).")
@click.option("--fpr", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.01,
              show_default=True, help="Fraction of ordinary prompts each rule may flag.")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), default=None,
              help="Base policy whose thresholds are replaced (default: the catalogue's default policy).")
@click.option("--positives", "positives_file", type=click.Path(dir_okay=False), default=None,
              help="Prompts the rules should catch: their recall at the new thresholds is reported.")
@click.option("--new-tokens", default=16, show_default=True, type=click.IntRange(1),
              help="Greedy tokens generated per prompt for generation/token rules.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--chat-template/--no-chat-template", "chat_template", default=None,
              help="Wrap prompts in the model's chat template (default: the model's zoo setting).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Policy YAML to write.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the numbers as JSON.")
def command(model_spec, pack_dir, prompts_file, half, fpr, policy_file, positives_file, new_tokens, batch_size,
            chat_template, out, json_out) -> None:
    """Thresholds from traffic: each rule of the policy flags FPR of the prompts (offline by default)."""
    from axisguard_cli.generate import read_prompts
    from guard.pack import AxisPack
    from guard.policy import load_policy
    from guard.policy_check import check_against_pack
    from integrations.hf_loading import load_model
    from integrations.traffic_scoring import score_traffic
    from probes.catalogue import BENIGN_TRAFFIC
    from probes.policies import default_policy, default_policy_text
    from probes.policy_writer import threshold_comment, write_thresholds
    from probes.traffic_thresholds import policy_thresholds
    from probes.traffic_whitening import whitened_on

    pack = AxisPack.load(pack_dir)
    if policy_file:
        try:
            base_text = Path(policy_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise AxisguardError(f"cannot read {policy_file}: {exc.strerror}", "pass an existing policy file") from None
        base = load_policy(policy_file)
    else:
        base_text, base = default_policy_text(), default_policy()
    check = check_against_pack(base, pack)
    if not check.ok:
        raise AxisguardError("the base policy cannot run on this pack:\n" + "\n".join(f"  - {e}" for e in check.errors),
                             f"check it with `axisguard policy check POLICY --pack {pack_dir}`")
    rules = [r for r in check.resolved if r.rule.enabled]
    if not rules:
        raise AxisguardError("the base policy has no enabled rule on this pack's axes", "pass a policy with rules")
    source = Path(prompts_file) if prompts_file else BENIGN_TRAFFIC
    prompts = read_prompts(source, half)
    positives = read_prompts(positives_file) if positives_file else []
    for axis, seen in whitened_on(pack, prompts).items():
        if seen:  # in-sample: whitening shrank these prompts' spread along the axis, so thresholds come out low
            click.echo(f"warning: {seen} of these {len(prompts)} prompts were used to whiten {axis} "
                       "(adapt --whiten-with); its thresholds are in-sample and will flag more than the requested "
                       "rate on new traffic. Whiten and set thresholds on disjoint samples (e.g. --half).", err=True)
    loaded = load_model(model_spec)
    pack.check_model(loaded.hidden_size, loaded.num_layers, loaded.architecture)
    needs_generation = any(r.rule.score != "prompt" for r in rules)
    tokens = new_tokens if needs_generation else 1
    click.echo(f"scoring {len(prompts)} prompts from {source}{f' (half {half})' if half else ''}"
               f"{f' + {len(positives)} positives' if positives else ''} on {loaded.name} "
               f"({tokens} greedy token(s) each)", err=True)
    scored = score_traffic(loaded, pack, prompts, tokens, batch_size, chat_template)
    scored_pos = score_traffic(loaded, pack, positives, tokens, batch_size, chat_template) if positives else []
    results = policy_thresholds(rules, pack.axis_names, scored, fpr, base.ema_alpha, scored_pos)
    header = [f"Thresholds set by `axisguard thresholds --fpr {fpr}` on {len(prompts)} ordinary prompts",
              f"({source.name}{f', half {half}' if half else ''}), model {loaded.name}, pack {pack.model.name} "
              f"(layers {pack.score_layers}), {tokens} greedy token(s) per prompt.",
              "Each rule is expected to flag that fraction of comparable traffic; re-run on your own.", ""]
    Path(out).write_text(write_thresholds(base_text, base, results, header), encoding="utf-8")
    for t in results:
        click.echo(f"  {t.rule:<30} {t.axis:<18} {t.score:<10} threshold {t.threshold:+.3f}  {threshold_comment(t)}")
    if json_out:
        Path(json_out).write_text(json.dumps({
            "model": loaded.name, "pack": str(pack_dir), "prompts": str(source), "half": half, "fpr": fpr,
            "new_tokens": tokens, "rules": [t.__dict__ for t in results]}, indent=2) + "\n", encoding="utf-8")
    click.echo(f"wrote {out}", err=True)
