"""Rendering, validating and promtool helpers for the Helm chart tests (no cluster, no project imports).

The chart is rendered with Helm's own engine (``helm-python-sdk``); prometheus-operator CRD schemas are
read through a path (``../shared/k8s-crd-schemas``), never copied; promtool comes from Debian's
``prometheus`` package (``scripts/setup.sh``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "axisguard"
SCENARIOS = sorted((CHART / "ci").glob("*.yaml"))
CRD_SCHEMAS = REPO.parent / "shared" / "k8s-crd-schemas" / "monitoring.coreos.com"
RELEASE, NAMESPACE = "rel", "axisguard"
KUBE_VERSIONS = ("v1.29.0", "v1.31.0")
MONITORING_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
# Grafana variables in the dashboard's queries, replaced by values PromQL accepts before parsing.
GRAFANA_VARS = {"$__rate_interval": "5m", "$namespace": "axisguard", "$model_name": "m", "${datasource}": "prom"}
METRIC_NAME = re.compile(r"\b(axisguard_[a-z0-9_]+|vllm:[a-z0-9_]+)")


def scenario_values(path: Path | None) -> dict[str, Any]:
    """Values of a ``ci/`` scenario file (None: the chart's defaults)."""
    return {} if path is None else helm.values_from_yaml(path.read_text())


def scenario_id(path: Path | None) -> str:
    return "defaults" if path is None else path.stem


def render_files(values: dict[str, Any], name: str = RELEASE, namespace: str = NAMESPACE) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values, name=name, namespace=namespace)


def render(values: dict[str, Any], name: str = RELEASE, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Every manifest the chart renders (NOTES.txt excluded)."""
    manifests = []
    for path, text in render_files(values, name, namespace).items():
        if path.endswith("NOTES.txt"):
            continue
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return manifests


def notes(values: dict[str, Any]) -> str:
    return next(text for path, text in render_files(values).items() if path.endswith("NOTES.txt"))


def of_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = of_kind(manifests, kind)
    return found


def pod_spec(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return one(manifests, "Deployment")["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def crd_schema(kind: str) -> dict[str, Any]:
    path = CRD_SCHEMAS / f"{kind.lower()}_v1.json"
    if not path.is_file():
        pytest.skip(f"CRD schema {path} not found (expected ../shared/k8s-crd-schemas next to the repository)")
    return json.loads(path.read_text())


def rule_groups(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The rendered PrometheusRule's groups, as a Prometheus rule file holds them."""
    return one(render(values), "PrometheusRule")["spec"]["groups"]


def dashboard() -> dict[str, Any]:
    return json.loads((CHART / "dashboards" / "axisguard.json").read_text())


def dashboard_exprs() -> list[str]:
    exprs = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard()["panels"])
    return exprs


def with_grafana_vars_filled(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: install Debian's prometheus package (scripts/setup.sh does)")
    return path


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def write_rule_file(path: Path, groups: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def mount_folders(container: dict[str, Any], root: Path, volumes: dict[str, Path] | None = None) -> dict[str, Path]:
    """A local folder for each of the container's mount points: ``volumes[name]`` or a new one under ``root``."""
    folders = {}
    for mount in container.get("volumeMounts", []):
        folder = (volumes or {}).get(mount["name"]) or root / mount["name"]
        folder.mkdir(parents=True, exist_ok=True)
        folders[mount["mountPath"]] = folder
    return folders


def localize(value: str, folders: dict[str, Path]) -> str:
    """``value`` with a mount-point prefix replaced by its local folder (other values unchanged)."""
    for path, folder in folders.items():
        if value == path or value.startswith(path.rstrip("/") + "/"):
            return str(folder) + value[len(path):]
    return value
