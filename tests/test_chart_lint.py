"""Helm's own strict lint of the chart, with its defaults and every ci/ scenario, at two Kubernetes versions."""

from __future__ import annotations

from pathlib import Path

import helm_python as helm
import pytest

from tests.chart_support import CHART, KUBE_VERSIONS, SCENARIOS, scenario_id, scenario_values

EXPECTED_SCENARIOS = {"default-values", "monitoring-values", "adapt-values", "existing-pack-values",
                      "kill-switch-values", "hardened-values"}


def test_the_ci_scenarios_cover_the_deployments_the_chart_supports() -> None:
    assert {p.stem for p in SCENARIOS} >= EXPECTED_SCENARIOS


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", [None, *SCENARIOS], ids=scenario_id)
def test_strict_lint_is_clean(scenario: Path | None, kube_version: str) -> None:
    report = helm.lint(str(CHART), scenario_values(scenario), strict=True, kube_version=kube_version)
    assert report["errors"] == []
    # Severity 2 = warning (an error under --strict), 3 = error; 1 (info) is only "icon is recommended".
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize(("values", "named"), [
    ({"replicas": 2}, "replicas"),                                   # unknown key at the top
    ({"pack": {"source": "existing", "existing": {"claim": "x"}}}, "claim"),   # unknown nested key
    ({"replicaCount": "two"}, "/replicaCount"),                     # wrong type
    ({"pack": {"source": "pvc"}}, "/pack/source"),                  # not an allowed value
    ({"monitoring": {"prometheusRule": {"window": "ten minutes"}}}, "/monitoring/prometheusRule/window"),
    ({"pack": {"source": "existing"}}, "/pack/existing"),           # existing without a PVC or an absolute path
])
def test_bad_values_are_refused_with_the_key_named(values: dict, named: str) -> None:
    report = helm.lint(str(CHART), values, strict=True, kube_version=KUBE_VERSIONS[-1])
    assert report["errors"], f"{values} was accepted"
    assert named in "\n".join(report["errors"])
    with pytest.raises(helm.HelmError, match=named.lstrip("/").split("/")[-1]):
        with helm.Chart.load(str(CHART)) as chart:
            chart.render(values, name="rel", namespace="axisguard")
