"""Every manifest the chart renders is valid Kubernetes, and wired the way the guard needs (no cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.chart_support import (
    CHART,
    KUBE_VERSIONS,
    MONITORING_KINDS,
    SCENARIOS,
    crd_schema,
    env_of,
    notes,
    of_kind,
    one,
    pod_spec,
    render,
    scenario_id,
    scenario_values,
)

ALL = [None, *SCENARIOS]
BY_NAME = {p.stem: p for p in SCENARIOS}


def rendered(stem: str | None, **overrides: Any) -> list[dict[str, Any]]:
    values = scenario_values(BY_NAME[stem] if stem else None)
    values.update(overrides)
    return render(values)


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def server(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    [vllm] = [c for c in pod_spec(manifests)["containers"] if c["name"] == "vllm"]
    return vllm


def is_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


@pytest.mark.parametrize("scenario", ALL, ids=scenario_id)
def test_every_manifest_validates(scenario: Path | None) -> None:
    manifests = render(scenario_values(scenario))
    assert manifests
    for manifest in manifests:
        if manifest["kind"] in MONITORING_KINDS:
            schema = crd_schema(manifest["kind"])
            jsonschema.validators.validator_for(schema)(schema).validate(manifest)
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)


def test_the_defaults_render_no_monitoring_objects_and_leave_the_guard_off() -> None:
    manifests = rendered(None)
    assert {m["kind"] for m in manifests} == {"Deployment", "Service", "ServiceAccount"}
    env = env_of(server(manifests))
    assert "AXISGUARD_PACK" not in env and "AXISGUARD_POLICY" not in env
    assert "initContainers" not in pod_spec(manifests)
    assert "THE GUARD IS OFF" in notes({})


def test_monitoring_objects_are_gated_and_carry_their_labels() -> None:
    manifests = rendered("monitoring-values")
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert one(manifests, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    [dashboard] = [m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["name"].endswith("-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["axisguard.json"] == (CHART / "dashboards" / "axisguard.json").read_text().rstrip("\n")


@pytest.mark.parametrize("scenario", ALL, ids=scenario_id)
def test_selectors_match_the_pods(scenario: Path | None) -> None:
    manifests = render(scenario_values(scenario))
    deployment = one(manifests, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one(manifests, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in server(manifests)["ports"]}
    for monitor in of_kind(manifests, "ServiceMonitor"):  # selects Services, by their labels and port name
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    for pdb in of_kind(manifests, "PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for hpa in of_kind(manifests, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        assert "replicas" not in deployment["spec"]  # the HPA owns the replica count


@pytest.mark.parametrize("scenario", ALL, ids=scenario_id)
def test_paths_in_the_environment_point_into_mounted_volumes(scenario: Path | None) -> None:
    values = scenario_values(scenario)
    manifests = render(values)
    spec = pod_spec(manifests)
    volumes = {v["name"]: v for v in spec["volumes"]}
    pack_in_image = not values.get("pack", {}).get("existing", {}).get("claimName")
    for container in containers(spec):
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        assert all(m["name"] in volumes for m in mounts.values())
        env = env_of(container)
        for name in ("AXISGUARD_PACK", "AXISGUARD_POLICY", "PROMETHEUS_MULTIPROC_DIR", "AXISGUARD_HOME", "HOME"):
            if name not in env or (name == "PROMETHEUS_MULTIPROC_DIR" and container["name"] != "vllm"):
                continue
            if name == "AXISGUARD_PACK" and values["pack"]["source"] == "existing" and pack_in_image:
                assert env[name].startswith("/"), "a pack in the image is an absolute path"
                continue
            holders = [path for path in mounts if is_under(env[name], path)]
            assert holders, f"{container['name']}: {name}={env[name]} is not under a mounted volume"
            if name == "AXISGUARD_PACK" and container["name"] != "adapt-pack":
                assert mounts[holders[0]].get("readOnly"), "the server only reads the pack"
        if container["name"] == "vllm" and values.get("model", {}).get("existingClaim"):
            model_path = container["args"][container["args"].index("--model") + 1]
            assert any(is_under(model_path, path) and volumes[m["name"]].get("persistentVolumeClaim")
                       for path, m in mounts.items())
        if container["name"] == "vllm":
            shm = mounts["/dev/shm"]
            assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"
            metrics = mounts[env["PROMETHEUS_MULTIPROC_DIR"]]
            assert "emptyDir" in volumes[metrics["name"]]


def test_the_kill_switch_disables_the_plugin_and_everything_that_needs_it() -> None:
    manifests = rendered("kill-switch-values")
    assert env_of(server(manifests))["AXISGUARD_DISABLE"] == "1"
    assert "initContainers" not in pod_spec(manifests)
    assert of_kind(manifests, "PrometheusRule") == []
    assert of_kind(manifests, "ServiceMonitor"), "vLLM's own metrics are still scraped"
    assert "THE GUARD IS OFF" in notes(scenario_values(BY_NAME["kill-switch-values"]))
    for stem in BY_NAME:
        if stem != "kill-switch-values":
            assert "AXISGUARD_DISABLE" not in env_of(server(rendered(stem))), stem


def test_the_server_gets_the_plugin_environment_probes_and_gpu() -> None:
    manifests = rendered("monitoring-values")
    vllm = server(manifests)
    env = env_of(vllm)
    assert env["VLLM_PLUGINS"] == "axisguard"
    assert env["AXISGUARD_PACK"] == "/packs/qwen2.5-0.5b"
    assert env["AXISGUARD_POLICY"] == "/etc/axisguard/policy/policy.yaml"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"] == {"path": "/health", "port": "http"}
    budget = vllm["startupProbe"]["periodSeconds"] * vllm["startupProbe"]["failureThreshold"]
    assert budget >= 20 * 60, "large models need a long start-up budget"
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    # Stale counter files of a restarted container would be summed with the new ones.
    assert 'rm -f "$PROMETHEUS_MULTIPROC_DIR"/*.db && exec ' in vllm["command"][2]
    spec = pod_spec(manifests)
    assert spec["securityContext"]["runAsNonRoot"] is True
    for container in containers(spec):
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    policy = [m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["name"].endswith("-policy")]
    assert "toxic_prompt" in policy[0]["data"]["policy.yaml"]


def test_a_policy_change_rolls_the_pods() -> None:
    values = scenario_values(BY_NAME["monitoring-values"])
    before = one(render(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/policy"]
    values["policy"]["inline"]["rules"][0]["threshold"] = 2.5
    after = one(render(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/policy"]
    assert before != after


def test_the_adapt_init_container_writes_the_pack_the_server_reads() -> None:
    manifests = rendered("adapt-values")
    spec = pod_spec(manifests)
    adapt, check = spec["initContainers"]
    assert (adapt["name"], check["name"]) == ("adapt-pack", "check-policy")
    command = adapt["command"]
    assert command[:3] == ["axisguard", "adapt", "/bundle"]
    assert command[command.index("--target") + 1] == "/models/qwen2.5-0.5b"
    assert command[command.index("--layer") + 1] == "12"
    out = command[command.index("--out") + 1]
    assert env_of(server(manifests))["AXISGUARD_PACK"] == out == env_of(check)["AXISGUARD_PACK"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["packs"] and volumes["bundle"]["configMap"]["name"] == "axisguard-bundle"
    assert {m["name"]: m.get("readOnly", False) for m in adapt["volumeMounts"]}["packs"] is False


def test_the_pack_pin_reaches_the_check_and_the_server() -> None:
    manifests = rendered("existing-pack-values")
    digest = scenario_values(BY_NAME["existing-pack-values"])["pack"]["sha256"]
    spec = pod_spec(manifests)
    for container in containers(spec):
        assert env_of(container)["AXISGUARD_PACK_SHA256"] == digest
    [check] = spec["initContainers"]
    assert "--strict" in check["command"][2]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["policy"]["configMap"]["name"] == "axisguard-policy"
    assert env_of(server(manifests))["AXISGUARD_ALLOW_NAME_MISMATCH"] == "1"


def test_hardened_runs_read_only_with_writable_scratch_only() -> None:
    manifests = rendered("hardened-values")
    spec = pod_spec(manifests)
    vllm = server(manifests)
    assert vllm["securityContext"]["readOnlyRootFilesystem"] is True
    assert vllm["image"].endswith("@sha256:" + "0123456789abcdef" * 4)
    writable = {m["mountPath"] for m in vllm["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp", "/dev/shm", env_of(vllm)["PROMETHEUS_MULTIPROC_DIR"]}
    assert env_of(vllm)["HOME"].startswith("/tmp")
    assert spec["automountServiceAccountToken"] is False
    assert one(manifests, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
