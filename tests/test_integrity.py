"""Integrity before serving: tampered packs refused, pinning by manifest digest, atomic artifact
writes, and the API key on the guard's HTTP routes (the real FastAPI router, no engine needed)."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.testclient import TestClient

from guard.errors import AxisguardError, IntegrityError
from guard.pack import AxisPack
from guard.tensor_folder import MANIFEST, TENSORS, check_pinned_digest
from guard.text_files import write_text_atomic
from integrations.environment import environment
from integrations.tiny_models import build_tiny_model
from integrations.vllm.config import ENV_PACK_SHA256, GuardConfig
from tests.pack_factory import random_pack


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("integrity")
    loaded = build_tiny_model("llama", 64, num_layers=4, seed=0, save_to=root / "model")
    pack = random_pack(hidden_size=64, num_layers=4, layer=2, name=loaded.name)
    return {"root": root, "model": root / "model", "pack": pack.save(root / "pack"),
            "other": random_pack(hidden_size=64, num_layers=4, layer=2, name=loaded.name, seed=7).save(root / "other")}


def digest(pack: Path) -> str:
    return json.loads((pack / MANIFEST).read_text())["manifest_sha256"]


def serve_dry_run(model: Path, pack: Path, env: dict[str, str | None] | None = None):
    from axisguard_cli.main import cli

    with environment({"AXISGUARD_DISABLE": None, "AXISGUARD_CONFIG": None, ENV_PACK_SHA256: None, **(env or {})}):
        return CliRunner().invoke(cli, ["serve", "--model", str(model), "--pack", str(pack), "--dry-run"])


def copy_pack(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in (MANIFEST, TENSORS):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


@pytest.mark.parametrize("edit", ["tensors", "manifest"])
def test_a_tampered_pack_is_refused_before_the_server_starts(served, tmp_path, edit):
    pack = copy_pack(served["pack"], tmp_path / "pack")
    if edit == "tensors":
        data = bytearray((pack / TENSORS).read_bytes())
        data[-1] ^= 0xFF
        (pack / TENSORS).write_bytes(bytes(data))
    else:
        manifest = json.loads((pack / MANIFEST).read_text())
        manifest["model"]["layer"] = 3
        (pack / MANIFEST).write_text(json.dumps(manifest))
    result = serve_dry_run(served["model"], pack)
    assert result.exit_code == 2, result.output
    assert "tampered" in result.output or "modified" in result.output
    assert "Traceback" not in result.output


def test_a_pinned_pack_is_accepted_and_a_swapped_consistent_one_refused(served):
    pin = digest(served["pack"])
    config = GuardConfig.from_env({"AXISGUARD_PACK": str(served["pack"]), ENV_PACK_SHA256: pin})
    assert config is not None and config.pack_sha256 == pin
    assert config.to_env()[ENV_PACK_SHA256] == pin  # travels to vLLM's child processes
    AxisPack.load(served["other"])  # self-consistent: the unkeyed hashes alone accept it
    with pytest.raises(IntegrityError, match="not the approved pack"):
        GuardConfig.from_env({"AXISGUARD_PACK": str(served["other"]), ENV_PACK_SHA256: pin})
    assert serve_dry_run(served["model"], served["pack"], {ENV_PACK_SHA256: pin}).exit_code == 0
    refused = serve_dry_run(served["model"], served["other"], {ENV_PACK_SHA256: pin})
    assert refused.exit_code == 2 and "not the approved pack" in refused.output


def test_serve_passes_the_operators_settings_on(served):
    """Found by the soak: `axisguard serve` used to reset AXISGUARD_VERDICT_HISTORY to its default."""
    pin = digest(served["pack"])
    result = serve_dry_run(served["model"], served["pack"], {"AXISGUARD_VERDICT_HISTORY": "256", ENV_PACK_SHA256: pin})
    assert result.exit_code == 0, result.output
    assert "AXISGUARD_VERDICT_HISTORY=256" in result.output and f"{ENV_PACK_SHA256}={pin}" in result.output


def test_the_pin_in_the_config_file(served, tmp_path):
    config_file = tmp_path / "axisguard.yaml"
    config_file.write_text(f"pack: {served['other']}\npack_sha256: '{digest(served['pack'])}'\n")
    with pytest.raises(IntegrityError, match="pins"):
        GuardConfig.from_env({"AXISGUARD_CONFIG": str(config_file)})
    config_file.write_text(f"pack: {served['other']}\npack_sha256: {digest(served['other'])}\n")
    assert GuardConfig.from_env({"AXISGUARD_CONFIG": str(config_file)}).pack_sha256 == digest(served["other"])


@pytest.mark.parametrize("pin", ["abc", "g" * 64, ""])
def test_a_malformed_pin_says_what_to_use(served, pin):
    if not pin:
        assert GuardConfig.from_env({"AXISGUARD_PACK": str(served["pack"]), ENV_PACK_SHA256: pin}).pack_sha256 == ""
        return
    with pytest.raises(AxisguardError, match="manifest_sha256"):
        check_pinned_digest(served["pack"], pin, ENV_PACK_SHA256)


def test_a_failed_write_leaves_the_previous_artifact_whole(served, tmp_path):
    pack = copy_pack(served["pack"], tmp_path / "pack")
    before = {p.name: p.read_bytes() for p in pack.iterdir()}
    broken = random_pack(hidden_size=64, num_layers=4, layer=2)
    broken.vectors = np.array([[object()]], dtype=object)  # safetensors cannot store it
    with pytest.raises(Exception):  # noqa: B017 - any failure; what matters is what is left on disk
        broken.save(pack)
    assert {p.name: p.read_bytes() for p in pack.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pack"], "no temp folder left behind"
    random_pack(hidden_size=64, num_layers=4, layer=2, seed=3).save(pack)  # replacing works, atomically
    assert AxisPack.load(pack).vectors.shape == (3, 64) and sorted(p.name for p in tmp_path.iterdir()) == ["pack"]
    target = write_text_atomic(tmp_path / "out" / "results.json", "{}\n")
    assert target.read_text() == "{}\n" and [p.name for p in target.parent.iterdir()] == ["results.json"]


# --- the API key on /axisguard/* -----------------------------------------------------------------------


def guarded_app(args: Namespace) -> TestClient:
    import asyncio

    from integrations.vllm.routes import AxisguardEndpoints

    app = FastAPI()
    plugin = AxisguardEndpoints(enabled=True)
    plugin.attach_router(app)
    asyncio.run(plugin.init_state(None, app.state, args))  # no engine: verdict lookups answer 404
    return TestClient(app)


@pytest.mark.parametrize("path", ["/axisguard/status", "/axisguard/requests/chatcmpl-x"])
def test_routes_require_the_servers_api_key(path, monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    client = guarded_app(Namespace(api_key=["s3cret", "other"]))
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get(path, headers={"Authorization": "Basic s3cret"}).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code in (200, 404)
    assert client.get(path, headers={"Authorization": "Bearer other"}).status_code in (200, 404)


def test_the_environment_key_and_no_key(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "from-env")
    client = guarded_app(Namespace(api_key=None))
    assert client.get("/axisguard/status").status_code == 401
    assert client.get("/axisguard/status", headers={"Authorization": "Bearer from-env"}).status_code == 200
    monkeypatch.delenv("VLLM_API_KEY")
    assert guarded_app(Namespace(api_key=None)).get("/axisguard/status").status_code == 200  # open, like vLLM's


def test_every_route_of_the_router_carries_the_key_check():
    """A route added later (e.g. a POST) is covered because the check sits on the router itself."""
    from integrations.vllm.route_auth import require_api_key
    from integrations.vllm.routes import build_router

    router = build_router()
    router.add_api_route("/future", lambda: {"ok": True}, methods=["POST"])
    for route in router.routes:
        assert any(dep.call is require_api_key for dep in route.dependant.dependencies), route.path
