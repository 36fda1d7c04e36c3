"""Policy files: good and bad YAML/JSON, messages naming field/value/allowed values, overrides,
checks against a pack, the shipped default policy and `axisguard policy check`."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from axisguard_cli.main import cli
from guard.errors import AxisguardError
from guard.overrides import resolve_overrides
from guard.policy import Policy, load_policy, policy_digest
from guard.policy_check import check_against_pack
from probes.policies import default_policy
from tests.pack_factory import random_pack

CATALOGUE_AXES = {"refusal", "sycophancy", "toxicity", "jailbreak", "deception", "power_seeking",
                  "self_preservation", "manipulation", "privacy", "hallucination"}

GOOD = {
    "name": "house",
    "on_error": "fail_closed",
    "allow_overrides": ["enabled", "*.threshold", "tox.action"],
    "rules": [
        {"name": "harm", "axis": "refusal", "score": "prompt", "threshold": 2.0, "action": "steer",
         "steer": {"method": "add", "strength": 0.2, "relative": True, "duration": 32}},
        {"name": "tox", "axis": "toxicity", "score": "token", "threshold": "auto", "min_tokens": 2, "window": 8,
         "action": "steer", "steer": {"method": "clamp", "target": "safe"}},
        {"name": "syc", "axis": "sycophancy", "score": "generation", "threshold": 1.5, "action": "flag"},
    ],
}


def write(tmp_path, name, data) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("name", ["policy.yaml", "policy.yml", "policy.json"])
def test_good_files_load_in_yaml_and_json(tmp_path, name):
    policy = load_policy(write(tmp_path, name, GOOD))
    assert [r.name for r in policy.rules] == ["harm", "tox", "syc"]
    assert policy.rules[1].threshold == "auto" and policy.rules[0].steer.relative


def bad(**changes) -> dict:
    data = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        node = data
        *parents, last = path.split("__")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[last] = value
    return data


@pytest.mark.parametrize(("data", "expected"), [
    (bad(rules__0__action="stee"), ["rules[0].action", "'stee'", "'observe', 'flag', 'steer' or 'stop'"]),
    (bad(rules__1__score="tokens"), ["rules[1].score", "'tokens'", "'prompt', 'generation' or 'token'"]),
    (bad(rules__2__treshold=3), ["rules[2].treshold", "unknown field", "threshold, direction"]),
    (bad(rules__0__steer={"method": "push"}), ["rules[0].steer.method", "'push'", "'add', 'ablate' or 'clamp'"]),
    (bad(rules__0__steer={"method": "add", "sped": 1}), ["rules[0].steer.sped", "allowed fields: method, axis"]),
    (bad(rules__2__threshold="high"), ["rules[2].threshold", "'high'", "a number in z units or 'auto'"]),
    (bad(on_error="retry"), ["on_error", "'retry'", "'fail_open' or 'fail_closed'"]),
    (bad(rules__2__window=4), ["rules[2]", "'window' applies only to score 'token'"]),
    (bad(rules__1__min_tokens=9), ["rules[1]", "min_tokens 9 can never be reached in a window of 8"]),
    (bad(rules__2__action="steer"), ["rules[2]", "action 'steer' but no 'steer' block"]),
    (bad(rules__1__steer={"method": "clamp", "strength": 3}), ["rules[1].steer", "strength 3.0", "0..1"]),
    (bad(rules__1__name="harm"), ["rule names must be unique", "harm"]),
    (bad(allow_overrides=["harm.colour"]), ["'harm.colour'", "enabled, threshold, action, strength, min_tokens"]),
    (bad(ema_alpha=0), ["ema_alpha", "greater than 0"]),
    ({"rules": [{"name": "x", "axis": "refusal"}]}, ["rules[0].threshold", "required field is missing"]),
])
def test_bad_files_name_the_field_the_value_and_what_is_allowed(tmp_path, data, expected):
    with pytest.raises(AxisguardError) as info:
        load_policy(write(tmp_path, "bad.yaml", data))
    message = str(info.value)
    for fragment in expected:
        assert fragment in message, message


def test_unreadable_and_malformed_files_are_user_errors(tmp_path):
    with pytest.raises(AxisguardError, match="cannot read policy"):
        load_policy(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules: [\n  - name: a\n    axis: [\n")
    with pytest.raises(AxisguardError, match="not valid YAML"):
        load_policy(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(AxisguardError, match="must be a mapping"):
        load_policy(listed)


def test_overrides_follow_the_allow_list_and_coerce_http_strings():
    policy = Policy.model_validate(GOOD)
    resolved = resolve_overrides(policy, {"enabled": "false", "harm.threshold": "3.5", "tox": {"action": "flag"}})
    assert resolved.enabled is False
    assert resolved.rules == {"harm": {"threshold": 3.5}, "tox": {"action": "flag"}}
    with pytest.raises(AxisguardError) as info:
        resolve_overrides(policy, {"harm.action": "stop"})
    assert "'harm.action'" in str(info.value) and "tox.action" in info.value.hint
    with pytest.raises(AxisguardError, match="bad value 'maybe'; allowed: true or false"):
        resolve_overrides(policy, {"enabled": "maybe"})
    with pytest.raises(AxisguardError, match="allowed: observe, flag, steer, stop"):
        resolve_overrides(policy, {"tox.action": "explode"})
    no_steer = Policy.model_validate(bad(allow_overrides=["*.action"]))
    with pytest.raises(AxisguardError, match="no 'steer' block"):
        resolve_overrides(no_steer, {"syc.action": "steer"})
    with pytest.raises(AxisguardError, match="not allowed"):
        resolve_overrides(policy, {"ghost.threshold": 1})


def test_shadow_mode_override_and_stop_message():
    policy = Policy.model_validate(GOOD)
    with pytest.raises(AxisguardError, match="not allowed"):  # only when the policy lists "mode"
        resolve_overrides(policy, {"mode": "shadow"})
    shadowable = Policy.model_validate(bad(allow_overrides=["mode"]))
    assert resolve_overrides(shadowable, {"mode": "shadow"}).mode == "shadow"
    assert resolve_overrides(shadowable, {}).mode is None  # the policy's own mode
    with pytest.raises(AxisguardError, match="allowed: enforce, shadow"):
        resolve_overrides(shadowable, {"mode": "off"})
    with pytest.raises(AxisguardError, match="not allowed"):  # a rule has no mode; rule names come from the policy
        resolve_overrides(shadowable, {"harm.mode": "shadow"})
    with pytest.raises(AxisguardError, match="allow_overrides entry 'harm.mode'"):
        Policy.from_mapping(bad(allow_overrides=["harm.mode"]))
    stopping = Policy.model_validate(bad(mode="shadow", rules__0__stop={"message": "No."}))
    assert stopping.mode == "shadow" and stopping.rules[0].stop is not None and stopping.rules[0].stop.message == "No."
    assert policy_digest(stopping) != policy_digest(policy)
    assert policy_digest(Policy.model_validate(GOOD)) == policy_digest(policy)  # content, not identity
    with pytest.raises(AxisguardError, match="mode"):
        Policy.from_mapping(bad(mode="loud"))


def test_check_against_pack_binds_rules_and_reports_problems():
    pack = random_pack(axes=("refusal", "toxicity"), num_layers=4, layer=2, pos_mean_z=3.0, neg_mean_z=-1.0)
    report = check_against_pack(Policy.model_validate(GOOD), pack)
    assert report.ok and report.skipped == ["syc"]
    assert any("'sycophancy' is not in the pack" in w for w in report.warnings)
    tox = next(r for r in report.resolved if r.rule.name == "tox")
    assert tox.threshold == pytest.approx(1.0) and tox.clamp_target_z == pytest.approx(-1.0)
    strict = check_against_pack(Policy.model_validate(bad(unknown_axes="error")), pack)
    assert not strict.ok and "sycophancy" in strict.errors[0]
    layers = check_against_pack(Policy.model_validate(bad(rules__0__steer={"method": "add", "layers": [1, 7]})), pack)
    assert any("steer.layers [7] out of range; allowed: 0..3" in e for e in layers.errors)
    clamp = check_against_pack(
        Policy.model_validate(bad(rules__1__steer={"method": "clamp", "layers": [1]})), pack)
    assert any("allowed steer.layers: [2]" in e for e in clamp.errors)
    never = check_against_pack(Policy.model_validate(bad(rules__0__threshold=12)), pack)
    assert any("may never fire" in w for w in never.warnings)


def test_default_policy_covers_the_catalogue_axes():
    policy = default_policy()
    assert {r.axis for r in policy.rules} == CATALOGUE_AXES
    actions = {r.axis: r.action for r in policy.rules}
    assert actions["refusal"] == "steer" and actions["jailbreak"] == "steer" and actions["toxicity"] in ("flag", "steer")
    # on a pack with a subset of the axes the rest are skipped, not fatal
    report = check_against_pack(policy, random_pack(axes=("refusal", "toxicity", "jailbreak")))
    assert report.ok and len(report.resolved) == 4 and len(report.skipped) == len(policy.rules) - 4
    with pytest.raises(AxisguardError, match="not allowed"):  # clients cannot switch the default guard off
        resolve_overrides(policy, {"enabled": False})


def test_cli_policy_check(tmp_path):
    pack_dir = random_pack(axes=("refusal", "toxicity")).save(tmp_path / "pack")
    runner = CliRunner()
    good = write(tmp_path, "good.yaml", GOOD)
    ok = runner.invoke(cli, ["policy", "check", good, "--pack", str(pack_dir)])
    assert ok.exit_code == 0, ok.output
    assert "'sycophancy' is not in the pack" in ok.output and "OK" in ok.output
    strict = runner.invoke(cli, ["policy", "check", good, "--pack", str(pack_dir), "--strict", "--json"])
    assert strict.exit_code == 1 and json.loads(strict.output)["skipped"] == ["syc"]
    refused = runner.invoke(cli, ["policy", "check", write(tmp_path, "e.yaml", bad(unknown_axes="error")),
                                  "--pack", str(pack_dir)])
    assert refused.exit_code == 1 and "FAILED" in refused.output
    invalid = runner.invoke(cli, ["policy", "check", write(tmp_path, "x.yaml", bad(rules__0__action="stee"))])
    assert invalid.exit_code == 2 and "rules[0].action" in invalid.output
    shown = runner.invoke(cli, ["policy", "default"])
    assert shown.exit_code == 0 and Policy.model_validate(yaml.safe_load(shown.output)).name == default_policy().name
