"""The chart's PrometheusRule under promtool: the rules load, and each alert fires on a synthetic series that
should fire it and stays silent on one that should not (`promtool test rules`, the chart's default values)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart_support import (
    NAMESPACE,
    SCENARIOS,
    render,
    rule_groups,
    run_promtool,
    scenario_values,
    write_rule_file,
)

MONITORING = next(p for p in SCENARIOS if p.stem == "monitoring-values")
MODEL = "qwen2.5-0.5b"
SERIES_LABELS = f'job="rel-axisguard", namespace="{NAMESPACE}", model_name="{MODEL}"'
EVAL_AT = "45m"  # past every default `for:` (the longest is 30m) and rate window (10m)


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    extra = "".join(f', {k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{SERIES_LABELS}{extra}}}", "values": values}


def finished(per_minute: float, outcome: str = "clean") -> dict[str, str]:
    return series("axisguard_requests_finished_total", f"0+{per_minute}x60", outcome=outcome)


# alert -> (labels it fires with, series that fire it, series that must not)
CASES: dict[str, tuple[dict[str, str], list[dict[str, str]], list[dict[str, str]]]] = {
    "AxisguardGuardErrors": (
        {"stage": "metrics", "severity": "warning"},
        [series("axisguard_errors_total", "0+1x60", stage="metrics")],
        [series("axisguard_errors_total", "3x60", stage="metrics")],  # old errors, none new
    ),
    "AxisguardHookFailures": (
        {"severity": "critical"},
        [series("axisguard_errors_total", "0+2x60", stage="score"), finished(10)],
        [series("axisguard_errors_total", "0+2x60", stage="finish"), finished(10)],  # not a hook stage
    ),
    "AxisguardFlagRateHigh": (  # per rule: two rules on one axis, only the busy one alerts
        {"axis": "toxicity", "rule": "tox_gen", "severity": "warning"},
        [series("axisguard_actions_total", "0+5x60", axis="toxicity", action="flag", rule="tox_gen"),
         series("axisguard_actions_total", "0+1x60", axis="toxicity", action="flag", rule="tox_prompt"),
         finished(10)],
        [series("axisguard_actions_total", "0+1x60", axis="toxicity", action="flag", rule="tox_gen"),
         series("axisguard_actions_total", "0+1x60", axis="toxicity", action="flag", rule="tox_prompt"),
         finished(10),
         # a high share, but of almost no traffic (below minRequestRate)
         series("axisguard_actions_total", "0+0.1x60", axis="privacy", action="flag", rule="priv")],
    ),
    "AxisguardSteerRateHigh": (
        {"axis": "refusal", "rule": "harm_steer", "severity": "warning"},
        [series("axisguard_actions_total", "0+6x60", axis="refusal", action="steer", rule="harm_steer"), finished(10)],
        [series("axisguard_actions_total", "0+6x60", axis="refusal", action="flag", rule="harm_flag"), finished(10),
         # shadow mode counts what it would do; that is no steering
         series("axisguard_actions_total", "0+6x60", axis="refusal", action="would_steer", rule="harm_steer")],
    ),
    "AxisguardPolicyReloadRefused": (
        {"severity": "warning"},
        [series("axisguard_policy_reloads_total", "0x40 1x20", result="refused"),
         series("axisguard_policy_reloads_total", "0+1x60", result="applied")],
        [series("axisguard_policy_reloads_total", "0+1x60", result="applied")],
    ),
    "AxisguardStopRateHigh": (
        {"severity": "warning"},
        [finished(1, "stopped"), finished(9)],
        [finished(0.2, "stopped"), finished(9.8)],
    ),
    "AxisguardNoScoredRequests": (
        {"severity": "critical"},
        [series("vllm:prompt_tokens_total", "0+100x60", engine="0")],
        [series("vllm:prompt_tokens_total", "0+100x60", engine="0"),
         series("axisguard_tokens_scored_total", "0+100x60", phase="prompt")],
    ),
    "AxisguardScoreDrift": (
        {"severity": "warning"},
        [series("axisguard_drift", "5x60")],
        [series("axisguard_drift", "1.1x60")],
    ),
}


def alert_test(alert: str, input_series: list[dict[str, str]], expected: list[dict[str, Any]]) -> dict[str, Any]:
    return {"interval": "1m", "input_series": input_series,
            "alert_rule_test": [{"eval_time": EVAL_AT, "alertname": alert, "exp_alerts": expected}]}


@pytest.fixture(scope="module")
def rule_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rule_file(tmp_path_factory.mktemp("rules") / "axisguard.rules.yaml",
                           rule_groups(scenario_values(MONITORING)))


def test_rules_pass_promtool_check(rule_file: Path) -> None:
    result = run_promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {r["alert"] for g in yaml.safe_load(rule_file.read_text())["groups"] for r in g["rules"]}
    assert alerts == set(CASES)


@pytest.mark.parametrize("alert", sorted(CASES))
def test_alert_fires_on_its_series_and_not_on_a_quiet_one(rule_file: Path, alert: str, tmp_path: Path) -> None:
    labels, firing, quiet = CASES[alert]
    groups = yaml.safe_load(rule_file.read_text())["groups"]
    # promtool compares annotations too; they are templates of the firing value (their expansion is
    # checked by the end-to-end test), so this copy of the rules compares labels only.
    for rule in (r for g in groups for r in g["rules"]):
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        rule.pop("annotations")
    rules = write_rule_file(tmp_path / "rules.yaml", groups)
    expected = {"exp_labels": {"namespace": NAMESPACE, "model_name": MODEL, **labels}}
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m",
             "tests": [alert_test(alert, firing, [expected]), alert_test(alert, quiet, [])]}
    case = tmp_path / "test.yaml"
    case.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run_promtool("test", "rules", str(case), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_guard_alert_without_a_guard() -> None:
    values = scenario_values(MONITORING)
    values["pack"] = {"source": "none"}
    assert [m for m in render(values) if m["kind"] == "PrometheusRule"] == []
