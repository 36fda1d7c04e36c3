"""Thresholds from ordinary traffic: the statistic is exactly what the monitor compares (checked
against the real ``Guard``), a threshold set on one half of a sample flags about the requested
fraction of the other half (tiny real model), and the CLI writes a commented, loadable policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from axisguard_cli.main import cli
from guard.policy import Policy, Rule, load_policy
from guard.runtime import Guard, RowMap
from integrations.tiny_models import build_tiny_model
from integrations.traffic_scoring import score_traffic
from probes.traffic_thresholds import ScoredRequest, flag_rate, rule_statistics, threshold_for_rate
from tests.pack_factory import hidden_for_z, random_pack
from tests.test_hf_guard import pack_for

PACK = random_pack()
RULES = [
    {"name": "p", "axis": "toxicity", "score": "prompt", "threshold": 0.0},
    {"name": "pb", "axis": "toxicity", "score": "prompt", "threshold": 0.0, "direction": "below"},
    {"name": "g", "axis": "toxicity", "score": "generation", "threshold": 0.0, "min_tokens": 3},
    {"name": "t", "axis": "toxicity", "score": "token", "threshold": 0.0, "min_tokens": 2},
    {"name": "tw", "axis": "toxicity", "score": "token", "threshold": 0.0, "min_tokens": 2, "window": 3},
]


def fires(rule: dict, threshold: float, request: ScoredRequest) -> bool:
    """Run the real guard over the request, token by token, with ``rule`` at ``threshold``."""
    guard = Guard(PACK, Policy.model_validate({"ema_alpha": 0.3, "rules": [{**rule, "threshold": threshold}]}))
    prompt = [[0.0, float(request.prompt_z[1]), 0.0]]
    guard.on_hidden(PACK.layer, hidden_for_z(PACK, prompt), RowMap(["r"], torch.tensor([0]), torch.tensor([True])))
    for z in request.generated:
        guard.on_hidden(PACK.layer, hidden_for_z(PACK, [list(z)]), RowMap(["r"], torch.tensor([0]), torch.tensor([False])))
    return bool(guard.verdict("r").fired)


@pytest.mark.parametrize("rule", RULES, ids=[r["name"] for r in RULES])
def test_the_statistic_is_what_the_monitor_compares(rule):
    rng = np.random.default_rng(0)
    for _ in range(4):
        gen = np.zeros((6, 3))
        gen[:, 1] = rng.normal(size=6).round(2)
        request = ScoredRequest(np.array([0.0, round(float(rng.normal()), 2), 0.0]), gen)
        parsed = Rule.model_validate(rule)
        stat = rule_statistics(parsed, 1, [request], 0.3)[0]
        value = stat if parsed.direction == "above" else -stat
        assert fires(rule, value - 0.05 * (1 if parsed.direction == "above" else -1), request)
        assert not fires(rule, value + 0.05 * (1 if parsed.direction == "above" else -1), request)


def test_too_short_generations_never_fire_and_count_as_unflagged():
    rule = Rule.model_validate(RULES[2])
    short = [ScoredRequest(np.zeros(3), np.ones((1, 3))) for _ in range(90)]
    long = [ScoredRequest(np.zeros(3), np.full((4, 3), float(i))) for i in range(10)]
    t = threshold_for_rate(rule, "toxicity", 1, short + long, 0.05, 0.3)
    assert t.never_fire == 90 and t.sample_rate <= 0.05 and t.sample_rate > 0


def test_a_threshold_set_on_one_half_flags_about_that_fraction_of_the_other(tiny_llama):
    loaded = tiny_llama
    pack = pack_for(loaded)
    rng = np.random.default_rng(0)
    words = ["recipe", "train", "garden", "invoice", "poem", "python", "holiday", "budget", "essay", "weather"]
    prompts = [" ".join(rng.choice(words, size=int(rng.integers(3, 9)))) for _ in range(240)]
    scored = score_traffic(loaded, pack, prompts, new_tokens=4, batch_size=16)
    half_a, half_b = scored[::2], scored[1::2]
    for spec in (RULES[0], RULES[2]):
        rule = Rule.model_validate({**spec, "axis": "refusal"})
        t = threshold_for_rate(rule, "refusal", 0, half_a, 0.1, 0.2)
        other = flag_rate(rule_statistics(rule, 0, half_b, 0.2), t.threshold)
        # 120 held-out prompts at a 10 % target: three binomial standard deviations is 0.082
        assert abs(other - 0.1) < 0.09, (spec["name"], other)


def test_cli_writes_a_commented_policy_that_loads(tmp_path):
    loaded = build_tiny_model("llama", 64, num_layers=4, seed=5, save_to=tmp_path / "model")
    pack_dir = pack_for(loaded).save(tmp_path / "pack")
    prompts = tmp_path / "benign.jsonl"
    prompts.write_text("\n".join(json.dumps({"text": f"please help me plan item {i}", "half": "ab"[i % 2]})
                                 for i in range(40)) + "\n")
    positives = tmp_path / "harmful.txt"
    positives.write_text("how do I hurt someone\nwrite malware for me\n")
    out, report = tmp_path / "policy.yaml", tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["thresholds", "--model", str(tmp_path / "model"), "--pack", str(pack_dir),
                                      "--prompts", str(prompts), "--half", "a", "--fpr", "0.1", "--new-tokens", "3",
                                      "--positives", str(positives), "--out", str(out), "--json", str(report)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "on 20 ordinary prompts" in text and "(n=20, in-sample" in text and "recall" in text
    assert "# Default axisguard policy" in text  # the base policy's own comments are kept
    # the base's own generated header (`make default-thresholds`) is replaced, not stacked under the new one
    assert text.startswith("# Thresholds set by") and "# Thresholds regenerated" not in text
    policy = load_policy(out)
    numbers = json.loads(report.read_text())["rules"]
    by_name = {r.name: r for r in policy.rules}
    assert {n["rule"] for n in numbers} == {"harmful_request", "toxic_prompt", "toxic_generation",
                                            "sycophantic_generation"}  # the rules on the pack's axes
    for n in numbers:
        assert by_name[n["rule"]].threshold == pytest.approx(n["threshold"], abs=1e-4)
        assert n["sample_rate"] <= 0.1
    assert yaml.safe_load(text)["rules"][0]["steer"]["strength"] == 0.5
    bad = CliRunner().invoke(cli, ["thresholds", "--model", str(tmp_path / "model"), "--pack", str(pack_dir),
                                   "--prompts", str(prompts), "--half", "b", "--fpr", "1.5", "--out", str(out)])
    assert bad.exit_code == 2
