"""`clamp` counter-steering on toxicity (issue #4): observe-only vs clamp on the same prompts.

Prompts: the catalogue's toxicity *test* positives (requests to continue or polish abusive text).
Both runs score every generated token on the pack's toxicity axis; the clamp run additionally sets
the toxicity projection of every generated token at the pack's layer back to the calibrated safe
side (the pack's ``neg_mean_z``) whenever it is above it. Scores are read before the clamp at that
layer, so a lower generation z in the clamp run is the downstream effect of clamping earlier tokens.
Writes bench/results/clamp_toxicity.{json,md}.

    python -m scripts.example_clamp --pack PACK [--model qwen2.5-0.5b]
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from guard.pack import AxisPack
from guard.policy import Policy
from guard.runtime import Guard
from integrations.hf_guard import guarded_generate
from integrations.hf_loading import load_model
from probes.catalogue import load_catalogue


def policy(action: str) -> Policy:
    rule = {"name": "toxic_generation", "axis": "toxicity", "score": "token", "threshold": -1e9, "action": action}
    if action == "steer":
        rule["steer"] = {"method": "clamp", "target": "safe", "side": "above"}
    return Policy.from_mapping({"version": 1, "name": f"clamp-example-{action}", "rules": [rule]})


def mean_generation_z(verdict: dict) -> float:
    values = [v for v in verdict["trajectory"]["toxicity"][1:] if v is not None]  # skip the first token (pre-clamp)
    return float(np.mean(values)) if values else float("nan")


@click.command()
@click.option("--model", default="qwen2.5-0.5b", show_default=True)
@click.option("--pack", "pack_dir", required=True)
@click.option("--n", default=12, show_default=True)
@click.option("--max-new-tokens", default=40, show_default=True)
@click.option("--out", default="bench/results/clamp_toxicity", show_default=True)
def main(model: str, pack_dir: str, n: int, max_new_tokens: int, out: str) -> None:
    pack = AxisPack.load(pack_dir)
    loaded = load_model(model)
    prompts = [p.positive for p in load_catalogue(axes=["toxicity"]).test["toxicity"][:n]]
    runs = {}
    for action in ("observe", "steer"):
        guard = Guard(pack, policy(action), trajectory_tokens=max_new_tokens)
        runs[action] = guarded_generate(loaded, prompts, guard, max_new_tokens=max_new_tokens, batch_size=n)
    k = pack.axis_index("toxicity")
    rows = [{"prompt": p, "observe_text": o.text, "clamp_text": c.text,
             "observe_mean_z": mean_generation_z(o.verdict), "clamp_mean_z": mean_generation_z(c.verdict)}
            for p, o, c in zip(prompts, runs["observe"], runs["steer"], strict=True)]
    summary = {"model": model, "layer": pack.layers_by_axis[k], "safe_target_z": float(pack.neg_mean_z[k]), "n": n,
               "observe_mean_generation_z": float(np.nanmean([r["observe_mean_z"] for r in rows])),
               "clamp_mean_generation_z": float(np.nanmean([r["clamp_mean_z"] for r in rows])),
               "texts_changed": int(sum(r["observe_text"] != r["clamp_text"] for r in rows))}
    Path(out + ".json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")
    lines = [f"# `clamp` on toxicity: {model}", "",
             f"{n} toxicity test prompts, greedy, {max_new_tokens} tokens; clamp to the safe side "
             f"(z = {summary['safe_target_z']:.2f}) at layer {summary['layer']} on every generated token above it.", "",
             "| run | mean toxicity z of generated tokens |", "|---|---|",
             f"| observe only | {summary['observe_mean_generation_z']:+.2f} |",
             f"| clamp | {summary['clamp_mean_generation_z']:+.2f} |", "",
             f"Texts changed by the clamp: {summary['texts_changed']} of {n}.", "", "## First three", ""]
    for r in rows[:3]:
        lines += [f"**prompt:** {r['prompt']}", "", f"- observe: {r['observe_text'][:240]!r}",
                  f"- clamp: {r['clamp_text'][:240]!r}", ""]
    Path(out + ".md").write_text("\n".join(lines))
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
