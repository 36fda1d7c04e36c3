"""End to end, real parts: the chart's own server command and environment start a guarded vLLM (SmolLM2, CPU),
and a real Prometheus loaded with the chart's rendered rules scrapes it; after a burst of requests that trip a
flag rule, Prometheus has the axisguard series and the flag-rate alert is pending or firing.

The pod's mount points become local folders and the pod's port becomes a loopback port; nothing else of the
rendered container (command, arguments, environment, policy ConfigMap) is changed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart_project import free_port, http_json, model_folder, server_from_command, write_random_pack
from tests.chart_support import (
    NAMESPACE,
    env_of,
    localize,
    mount_folders,
    of_kind,
    one,
    pod_spec,
    render,
    write_rule_file,
)

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MODEL, HIDDEN, LAYERS, LAYER = "smollm2-135m", 576, 30, 20
FLAG_ALL = {"version": 1, "name": "chart-e2e", "rules": [
    {"name": "flag_all", "axis": "toxicity", "score": "prompt", "threshold": -1000000.0, "action": "flag"}]}
VALUES: dict[str, Any] = {
    "model": {"path": f"/models/{MODEL}", "existingClaim": "models", "servedName": MODEL},
    "pack": {"source": "existing", "existing": {"claimName": "packs", "path": MODEL}},
    "policy": {"inline": FLAG_ALL},
    "extraArgs": ["--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "8",
                  "--kv-cache-memory-bytes", str(64 << 20)],
    # Short windows so a burst of seconds is a "spike"; the expressions are the chart's own.
    "monitoring": {"prometheusRule": {"enabled": True, "window": "1m", "minRequestRate": 0,
                                      "alerts": {"flagRate": {"enabled": True, "for": "5s", "severity": "warning",
                                                              "threshold": 0.2}}}},
}
BURST = 12
STARTUP_S, PROMETHEUS_READY_S, ALERT_WAIT_S = 900, 120, 120


def wait_for(what: str, probe: Any, timeout_s: float, every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def with_arg(args: list[str], flag: str, value: str) -> list[str]:
    """The pod listens on all interfaces at 8000; the test server listens on loopback only."""
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("chart_e2e")
    manifests = render(VALUES)
    spec = pod_spec(manifests)
    [vllm] = spec["containers"]
    folders = mount_folders(vllm, root, {"model": model_folder(MODEL).parent})
    write_random_pack(folders["/packs"] / MODEL, MODEL, hidden=HIDDEN, num_layers=LAYERS, layer=LAYER)
    [policy_map] = [m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["name"].endswith("-policy")]
    for key, text in policy_map["data"].items():
        (folders["/etc/axisguard/policy"] / key).write_text(text)
    return {"root": root, "manifests": manifests, "container": vllm, "folders": folders}


@pytest.fixture(scope="module")
def server(deployment: dict[str, Any]) -> Iterator[Any]:
    vllm, folders = deployment["container"], deployment["folders"]
    port = free_port()
    args = with_arg(with_arg([localize(a, folders) for a in vllm["args"]], "--host", "127.0.0.1"),
                    "--port", str(port))
    env = {**os.environ, **{k: localize(v, folders) for k, v in env_of(vllm).items()}}
    # `python3` of this environment, as the image has vLLM's on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    with server_from_command([*vllm["command"], *args], env, MODEL, port, deployment["root"] / "server.log",
                             STARTUP_S) as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(deployment: dict[str, Any], server: Any) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not found: install Debian's prometheus package (scripts/setup.sh does)")
    root = deployment["root"]
    rules = one(deployment["manifests"], "PrometheusRule")["spec"]["groups"]
    write_rule_file(root / "rules.yaml", rules)
    job = one(deployment["manifests"], "Service")["metadata"]["name"]  # the ServiceMonitor's job label
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(root / "rules.yaml")],
        "scrape_configs": [{"job_name": job, "static_configs": [
            {"targets": [f"127.0.0.1:{server.port}"], "labels": {"namespace": NAMESPACE}}]}],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(root / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for("Prometheus to be ready", lambda: _status(base + "/-/ready") == 200, PROMETHEUS_READY_S)
            yield base
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _status(url: str) -> int:
    try:
        return http_json(url, timeout=5)[0]
    except OSError:
        return 0


def query(base: str, promql: str) -> list[dict[str, Any]]:
    status, reply = http_json(f"{base}/api/v1/query?query={urllib.parse.quote(promql)}")
    assert status == 200, reply
    return reply["data"]["result"]


def flag_alerts(base: str) -> list[dict[str, Any]]:
    status, reply = http_json(f"{base}/api/v1/alerts")
    assert status == 200, reply
    return [a for a in reply["data"]["alerts"] if a["labels"]["alertname"] == "AxisguardFlagRateHigh"
            and a["state"] in ("pending", "firing")]


def test_a_burst_of_flagged_requests_raises_the_flag_rate_alert(deployment: dict[str, Any], server: Any,
                                                                prometheus: str) -> None:
    job = f'job="{one(deployment["manifests"], "Service")["metadata"]["name"]}"'
    # One request first, so the counters exist before the burst and rate() sees the burst as increase.
    server.chat("Tell me a joke.", max_tokens=2)
    wait_for("the first scrape of the guard's counters",
             lambda: query(prometheus, f"axisguard_requests_finished_total{{{job}}}"), 60)
    assert flag_alerts(prometheus) == []  # one request in the window is not yet a rate
    for i in range(BURST):
        reply = server.chat(f"Describe colour number {i}.", max_tokens=4)
        assert server.verdicts(reply["id"])[0]["actions"] == ["flag"]

    alerts = wait_for("AxisguardFlagRateHigh to be pending or firing", lambda: flag_alerts(prometheus), ALERT_WAIT_S)
    assert {a["labels"]["axis"] for a in alerts} == {"toxicity"}
    assert alerts[0]["labels"]["model_name"] == MODEL and alerts[0]["labels"]["namespace"] == NAMESPACE
    assert "axis toxicity" in alerts[0]["annotations"]["summary"]

    # The alert can fire on a scrape taken before the burst's last requests were counted: wait for the
    # scrape that has them all (per-rule series, summed).
    flagged = f'sum(axisguard_actions_total{{{job}, action="flag", axis="toxicity", rule="flag_all"}}) >= {BURST}'
    wait_for(f"all {BURST} flags of the burst in Prometheus", lambda: query(prometheus, flagged), 60)
    for series in ("axisguard_pack_info", "axisguard_tokens_scored_total", "axisguard_token_score_bucket",
                   "vllm:num_requests_running", "vllm:prompt_tokens_total"):
        assert query(prometheus, f"{series}{{{job}}}"), f"Prometheus has no {series} series"
    # The guard scored the traffic, so the alert that watches for a silent guard stays quiet.
    status, reply = http_json(f"{prometheus}/api/v1/alerts")
    assert not [a for a in reply["data"]["alerts"] if a["labels"]["alertname"] == "AxisguardNoScoredRequests"]
