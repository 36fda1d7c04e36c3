"""The Grafana dashboard and the alerts speak real PromQL about metrics that really exist.

axisguard_ names are read from the guard's own registry (``GuardMetrics``), vLLM's from the installed
vLLM's metrics module (read as text, not imported), so a renamed metric breaks this test, not a panel.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.chart_project import exported_metric_names
from tests.chart_support import (
    METRIC_NAME,
    SCENARIOS,
    dashboard,
    dashboard_exprs,
    rule_groups,
    run_promtool,
    scenario_values,
    with_grafana_vars_filled,
    write_rule_file,
)

MONITORING = next(p for p in SCENARIOS if p.stem == "monitoring-values")
VLLM_SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def alert_exprs() -> list[str]:
    return [r["expr"] for g in rule_groups(scenario_values(MONITORING)) for r in g["rules"]]


def names_in(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in METRIC_NAME.findall(expr)}


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    # promtool parses PromQL in rule files: one recording rule per panel query.
    rules = [{"record": f"dashboard:query_{i}", "expr": with_grafana_vars_filled(e)} for i, e in enumerate(exprs)]
    path = write_rule_file(tmp_path / "dashboard.rules.yaml", [{"name": "dashboard", "rules": rules}])
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_axisguard_metric_named_is_one_the_guard_exports() -> None:
    exported = exported_metric_names()
    assert "axisguard_actions_total" in exported  # the registry was read, not an empty set
    used = {n for n in names_in(dashboard_exprs() + alert_exprs()) if n.startswith("axisguard_")}
    assert used - exported == set()
    # Every family the guard exports is on the dashboard (histograms through their buckets/sum/count).
    families = {n.removesuffix(s) for n in exported for s in ("_total", "_bucket", "_sum", "_count") if n.endswith(s)}
    families |= {n for n in exported if not n.endswith(("_total", "_bucket", "_sum", "_count", "_created"))}
    shown = {n.removesuffix(s) for n in names_in(dashboard_exprs()) for s in ("_total", "_bucket", "_sum", "_count", "")
             if n.endswith(s)}
    assert families - shown == set()


def test_every_vllm_metric_named_exists_in_the_installed_vllm() -> None:
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        pytest.skip("vllm is not installed")
    metrics_source = "".join(p.read_text() for p in (Path(spec.origin).parent / "v1" / "metrics").glob("*.py"))
    used = {n for n in names_in(dashboard_exprs() + alert_exprs()) if n.startswith("vllm:")}
    assert {"vllm:num_requests_running", "vllm:e2e_request_latency_seconds_bucket"} <= used
    for name in used:
        family = next((name.removesuffix(s) for s in VLLM_SUFFIXES if name.endswith(s)), name)
        assert f'"{family}"' in metrics_source, f"{name}: vLLM defines no metric {family!r}"


def test_dashboard_has_its_variables_and_a_datasource_per_query() -> None:
    board = dashboard()
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "namespace", "model_name"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'namespace=~"$namespace"' in target["expr"] and 'model_name=~"$model_name"' in target["expr"]
