"""The chart's init steps against the real `axisguard` CLI: the check-policy script is run for real, the
adapt-pack command is checked against `axisguard adapt --help`.

Each mount point of the init container becomes a temporary folder; a bad policy, a tampered pack or a
pack other than the pinned one must fail the step (and so the rollout) with a message saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.chart_project import write_random_pack
from tests.chart_support import env_of, localize, mount_folders, of_kind, pod_spec, render

PACK_SUBPATH = "packs/smollm2-135m"
GOOD_POLICY = {"version": 1, "name": "chart-check", "rules": [
    {"name": "toxic_prompt", "axis": "toxicity", "score": "prompt", "threshold": 2.0, "action": "flag"}]}


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("chart_check")
    return write_random_pack(root / "packs" / PACK_SUBPATH, "smollm2-135m", hidden=64, num_layers=4, layer=2)


def check_step(tmp_path: Path, pack_dir: Path, policy: dict[str, Any] | str | None, sha256: str = "",
               strict: bool = False) -> subprocess.CompletedProcess[str]:
    """Render the chart, then run its check-policy container's script with the mounts mapped to folders."""
    policy_values: dict[str, Any] = {"strict": strict}
    if policy is not None:  # a mapping, or the policy file's text (`--set-file policy.inline=...`)
        policy_values["inline"] = policy
    chart_values = {"pack": {"source": "existing", "sha256": sha256,
                             "existing": {"claimName": "packs", "path": PACK_SUBPATH}},
                    "policy": policy_values}
    tmp_path.mkdir(parents=True, exist_ok=True)
    manifests = render(chart_values)
    [check] = pod_spec(manifests)["initContainers"]
    assert check["name"] == "check-policy" and check["command"][:2] == ["/bin/sh", "-c"]
    mounts = mount_folders(check, tmp_path)
    shutil.copytree(pack_dir, tmp_path / "packs" / PACK_SUBPATH, dirs_exist_ok=True)
    for config_map in of_kind(manifests, "ConfigMap"):  # the policy file, as the pod sees it
        for key, text in config_map["data"].items():
            (mounts["/etc/axisguard/policy"] / key).write_text(text)
    env = {**os.environ, **{k: localize(v, mounts) for k, v in env_of(check).items()}, "TMPDIR": str(mounts["/tmp"])}
    # `python3` and the `axisguard` console script of this environment, as the image has them on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    return subprocess.run(check["command"], capture_output=True, text=True, env=env, timeout=300)


def test_a_good_policy_and_the_pinned_pack_pass(tmp_path: Path, pack: tuple[Path, str]) -> None:
    result = check_step(tmp_path, pack[0], GOOD_POLICY, sha256=pack[1])
    assert result.returncode == 0, result.stderr + result.stdout
    assert "OK" in result.stdout


def test_without_a_policy_the_default_policy_is_checked(tmp_path: Path, pack: tuple[Path, str]) -> None:
    result = check_step(tmp_path, pack[0], None)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "axisguard-default" in result.stdout


def test_another_pack_than_the_pinned_one_is_refused(tmp_path: Path, pack: tuple[Path, str]) -> None:
    result = check_step(tmp_path, pack[0], GOOD_POLICY, sha256="0" * 64)
    assert result.returncode == 2
    assert f"has manifest_sha256 {pack[1]}, but pack.sha256 pins {'0' * 64}" in result.stderr


def test_a_tampered_pack_is_refused(tmp_path: Path, pack: tuple[Path, str]) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(pack[0], tampered)
    with open(tampered / "tensors.safetensors", "r+b") as handle:
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\x00\x01\x02\x03")
    result = check_step(tmp_path, tampered, GOOD_POLICY)
    assert result.returncode != 0
    assert "tensors.safetensors" in result.stderr + result.stdout


def test_a_bad_policy_fails_the_step(tmp_path: Path, pack: tuple[Path, str]) -> None:
    result = check_step(tmp_path, pack[0], "version: 1\nname: broken\nrules:\n  - {name: r, axis: toxicity, action: explode}\n")
    assert result.returncode != 0
    assert "action" in result.stderr + result.stdout


def test_strict_turns_warnings_into_a_failed_rollout(tmp_path: Path, pack: tuple[Path, str]) -> None:
    policy = {**GOOD_POLICY, "rules": [*GOOD_POLICY["rules"],
                                       {"name": "lies", "axis": "deception", "threshold": 2.0, "action": "flag"}]}
    assert check_step(tmp_path / "lenient", pack[0], policy).returncode == 0
    strict = check_step(tmp_path / "strict", pack[0], policy, strict=True)
    assert strict.returncode == 1
    assert "deception" in strict.stdout


def test_the_adapt_command_uses_options_the_cli_has() -> None:
    values = {"pack": {"source": "adapt", "adapt": {"bundle": {"path": "/opt/bundle"}, "dataPath": "/data",
                                                     "layer": 3, "method": "adjoint", "engine": "vllm",
                                                     "whitenWith": "builtin", "whitenAxes": "refusal,jailbreak"}}}
    [adapt, _] = pod_spec(render(values))["initContainers"]
    program, subcommand, bundle, *options = adapt["command"]
    assert (program, subcommand, bundle) == ("axisguard", "adapt", "/opt/bundle")
    axisguard = shutil.which("axisguard", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    assert axisguard, "the axisguard console script is not installed"
    usage = subprocess.run([axisguard, "adapt", "--help"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0, usage.stderr
    flags = [o for o in options if o.startswith("--")]
    assert {"--target", "--method", "--engine", "--data", "--layer", "--whiten-with", "--whiten-axes", "--out"} <= set(flags)
    assert options[options.index("--whiten-axes") + 1] == "refusal,jailbreak"
    for flag in flags:
        assert flag in usage.stdout, f"`axisguard adapt` has no {flag} option"
