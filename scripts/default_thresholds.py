"""The default policy's thresholds from the built-in benign sample, and the threshold calibration check.

1. Builds the demo's pack (bundle calibrated on SmolLM2 + Gemma-3, adapted to Qwen2.5 from its
   anchors; cached activations make this quick after `make demo`).
2. Scores the built-in everyday-traffic sample (``probes/catalogue/benign_traffic.jsonl``, two
   disjoint halves a/b) and, for recall only, harmful prompts (the catalogue's refusal and
   jailbreak *test* positives) on Qwen2.5, as the monitor sees them (prompt z and a few greedy tokens).
3. Calibration check: thresholds set on half a at 1 % and 5 % are applied to half b (and b -> a);
   the flagged fraction of the other half should be close to the requested rate.
   -> ``bench/results/threshold_calibration_{target}.{json,md}``
4. Rewrites ``probes/catalogue/default_policy.yaml`` with thresholds set on the whole sample at
   ``--fpr`` (comments kept; each threshold line says its sample size and rates).
5. Demo check: scores ``make demo``'s three prompts (``scripts/demo_serve.py``) the same way and
   lists the rules of the (new) default policy each one fires
   -> ``bench/results/default_policy_demo_{target}.md``. ``--demo-only`` runs just this step
   against the policy file as it is.

    python -m scripts.default_thresholds            # or: make default-thresholds
    python -m scripts.default_thresholds --target smollm2-135m --no-write-policy   # the check only

With ``--target smollm2-135m`` the pack is the same bundle adapted to SmolLM2, which is one of the
bundle's sources: fine for checking flag-rate calibration, not a transfer result.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from axisguard_cli.generate import read_prompts
from guard.bundle import CanonicalBundle
from guard.pack import AxisPack
from guard.policy_check import check_against_pack
from integrations.hf_loading import load_model
from integrations.traffic_scoring import score_traffic
from probes.catalogue import BENIGN_TRAFFIC, load_catalogue
from probes.policies import DEFAULT_POLICY_RESOURCE, default_policy, default_policy_text
from probes.policy_writer import write_thresholds
from probes.traffic_thresholds import flags, held_out_rate, policy_thresholds

SOURCES = ("smollm2-135m", "gemma3-270m")
TARGET = "qwen2.5-0.5b"
CHECK_RATES = (0.01, 0.05)


def build_pack(out: Path, target: str) -> Path:
    def axisguard(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "axisguard_cli.main", *args], check=True)

    # The bundle and packs are reused between runs only while the catalogue they came from is unchanged.
    bundle = out / "bundle"
    stale = (bundle / "manifest.json").is_file() and (
        CanonicalBundle.load(bundle).catalogue_sha256 != load_catalogue().calibration_sha256)
    if stale:
        for folder in [bundle, *out.glob("pack-*")]:
            shutil.rmtree(folder, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    if not (bundle / "manifest.json").is_file():
        axisguard("calibrate", *[a for s in SOURCES for a in ("--source", s)], "--out", str(bundle))
    pack = out / f"pack-{target}"
    if not (pack / "manifest.json").is_file():
        axisguard("adapt", str(bundle), "--target", target, "--out", str(pack))
    return pack


def demo_check(loaded, pack: AxisPack, target: str, new_tokens: int, results: Path) -> list[str]:
    """Which rules of the default policy (as written now) fire on ``make demo``'s prompts, on ``target``."""
    from scripts.demo_serve import PROMPTS

    policy = default_policy()
    resolved = [r for r in check_against_pack(policy, pack).resolved if r.rule.enabled]
    scored = score_traffic(loaded, pack, list(PROMPTS.values()), new_tokens)
    lines = [f"# Default policy on `make demo`'s prompts ({target})", "",
             f"`python -m scripts.default_thresholds --target {target} --demo-only` (the pack of "
             f"`make default-thresholds`; prompt z and {new_tokens} greedy tokens through the transformers path, as "
             "the monitor scores them). A rule is listed when its statistic crosses its threshold.", "",
             "| prompt | refusal z | jailbreak z | rules that fire |", "|---|---|---|---|"]
    names = pack.axis_names
    for (kind, _), request in zip(PROMPTS.items(), scored, strict=True):
        fired = [f"{r.rule.name} -> {r.rule.action}" for r in resolved
                 if flags(r, r.threshold, [request], policy.ema_alpha)[0]]
        z = {a: request.prompt_z[names.index(a)] for a in ("refusal", "jailbreak") if a in names}
        lines.append(f"| {kind} | {z.get('refusal', float('nan')):+.2f} | {z.get('jailbreak', float('nan')):+.2f} | "
                     f"{', '.join(fired) or 'none'} |")
    thresholds = {r.rule.name: r.threshold for r in resolved if r.rule.name in ("harmful_request", "jailbreak_framing")}
    lines += ["", "Thresholds: " + ", ".join(f"`{k}` {v:+.3f}" for k, v in thresholds.items()) + "."]
    results.mkdir(parents=True, exist_ok=True)
    (results / f"default_policy_demo_{target}.md").write_text("\n".join(lines) + "\n")
    return lines


@click.command()
@click.option("--target", default=TARGET, show_default=True, help="Model the thresholds are measured on.")
@click.option("--fpr", default=0.01, show_default=True, help="Flag rate of the default policy's thresholds.")
@click.option("--new-tokens", default=16, show_default=True)
@click.option("--work", default="out/thresholds", show_default=True, type=click.Path(file_okay=False))
@click.option("--results", default="bench/results", show_default=True, type=click.Path(file_okay=False))
@click.option("--write-policy/--no-write-policy", default=True, show_default=True)
@click.option("--prompt-rules-only", is_flag=True,
              help="Check only the prompt rules (one forward pass per prompt, no generation): a quick check.")
@click.option("--demo-only", is_flag=True, help="Only score make demo's prompts against the policy file as it is.")
def main(target: str, fpr: float, new_tokens: int, work: str, results: str, write_policy: bool,
         prompt_rules_only: bool, demo_only: bool) -> None:
    started = time.time()
    pack_dir = build_pack(Path(work), target)
    pack = AxisPack.load(pack_dir)
    if demo_only:
        loaded = load_model(target)
        click.echo("\n".join(demo_check(loaded, pack, target, new_tokens, Path(results))))
        return
    base_text, base = default_policy_text(), default_policy()
    rules = [r for r in check_against_pack(base, pack).resolved
             if r.rule.enabled and (r.rule.score == "prompt" or not prompt_rules_only)]
    if prompt_rules_only:
        new_tokens, write_policy = 1, False
    halves = {h: read_prompts(BENIGN_TRAFFIC, h) for h in ("a", "b")}
    catalogue = load_catalogue(axes=["refusal", "jailbreak"])
    harmful = [p.positive for axis in ("refusal", "jailbreak") for p in catalogue.test[axis]]
    loaded = load_model(target)
    pack.check_model(loaded.hidden_size, loaded.num_layers, loaded.architecture)
    scored = {}
    for name, prompts in (*halves.items(), ("harmful", harmful)):
        click.echo(f"[{time.time() - started:5.0f}s] scoring {len(prompts)} {name} prompts on {target}", err=True)
        scored[name] = score_traffic(loaded, pack, prompts, new_tokens)
    check = []
    for fit, other in (("a", "b"), ("b", "a")):
        for rate in CHECK_RATES:
            for rule, t in zip(rules, policy_thresholds(rules, pack.axis_names, scored[fit], rate, base.ema_alpha,
                                                        scored["harmful"]), strict=True):
                check.append({"set_on": fit, "applied_to": other, "requested": rate, "rule": t.rule, "score": t.score,
                              "threshold": t.threshold, "in_sample": t.sample_rate,
                              "held_out": held_out_rate(rule, t, scored[other], base.ema_alpha),
                              "n_fit": t.sample_size, "n_held_out": len(scored[other]),
                              "harmful_recall": t.recall})
    out = Path(results)
    out.mkdir(parents=True, exist_ok=True)
    command = (f"python -m scripts.default_thresholds --target {target} --new-tokens {new_tokens}"
               + (" --prompt-rules-only --no-write-policy" if prompt_rules_only else ""))
    meta = {"model": target, "pack": str(pack_dir), "layers": pack.layers_by_axis, "new_tokens": new_tokens,
            "command": command, "harmful": "catalogue refusal+jailbreak test positives"}
    (out / f"threshold_calibration_{target}.json").write_text(json.dumps({**meta, "check": check}, indent=2) + "\n")
    lines = [f"# Threshold calibration check ({target})", "", f"Command: `{command}` (pack layers "
             f"{pack.layers_by_axis}, {new_tokens} greedy tokens per prompt).", "",
             "Thresholds set on one half of the built-in benign sample at the requested flag rate, then applied to "
             "the other, disjoint half. `harmful recall`: fraction of the catalogue's refusal + jailbreak test "
             f"positives ({len(harmful)}, written by us: indicative only) the rule flags at that threshold.", "",
             "| set on -> applied to | requested | rule | score | threshold | in-sample | held-out | harmful recall |",
             "|---|---|---|---|---|---|---|---|"]
    for c in check:
        lines.append(f"| {c['set_on']} -> {c['applied_to']} | {c['requested']:.0%} | {c['rule']} | {c['score']} | "
                     f"{c['threshold']:+.3f} | {c['in_sample']:.1%} | {c['held_out']:.1%} | {c['harmful_recall']:.1%} |")
    for rate in CHECK_RATES:
        held = [c["held_out"] for c in check if c["requested"] == rate]
        lines.append(f"\nRequested {rate:.0%}: held-out flag rate mean {sum(held) / len(held):.2%}, "
                     f"range {min(held):.1%}-{max(held):.1%} over {len(held)} rule x direction cells.")
    (out / f"threshold_calibration_{target}.md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))
    if write_policy:
        everything = scored["a"] + scored["b"]
        final = policy_thresholds(rules, pack.axis_names, everything, fpr, base.ema_alpha, scored["harmful"])
        header = [f"Thresholds regenerated by `make default-thresholds` (scripts/default_thresholds.py): each rule flags "
                  f"{fpr:.0%} of the built-in", f"benign sample ({len(everything)} everyday prompts) on {target} "
                  f"(pack calibrated on {' + '.join(SOURCES)}, adapted from anchors), {new_tokens} greedy tokens.",
                  "Set your own with `axisguard thresholds --model M --pack P --prompts YOUR_TRAFFIC.jsonl`.", ""]
        path = Path(__file__).resolve().parents[1] / "probes" / DEFAULT_POLICY_RESOURCE[1]
        path.write_text(write_thresholds(base_text, base, final, header), encoding="utf-8")
        click.echo(f"wrote {path}", err=True)
        click.echo("\n".join(demo_check(loaded, pack, target, new_tokens, out)))


if __name__ == "__main__":
    main()
