"""Configuration, kill switch, pack/model mismatch refusal, `axisguard serve` launch plan, id matching."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from guard.errors import AxisguardError, MismatchError
from integrations.environment import environment
from integrations.vllm.choices import choice_key, in_choice_order
from integrations.vllm.config import GuardConfig, overrides_from_extra_args
from integrations.vllm.engine import check_pack_matches, served_model_from_folder
from integrations.vllm.verdicts import VerdictStore, external_id, id_matches
from tests.vllm_support import TINY_HIDDEN, build_tiny_folder, random_pack

pytestmark = pytest.mark.vllm
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    root = tmp_path_factory.mktemp("vllm_config")
    folder, name = build_tiny_folder(root / "model")
    return {"root": root, "folder": folder, "name": name,
            "pack": random_pack(name, layer=2).save(root / "pack")}


# --- configuration ----------------------------------------------------------------------------------


def test_unconfigured_and_kill_switch() -> None:
    assert GuardConfig.from_env({}) is None
    assert GuardConfig.from_env({"AXISGUARD_PACK": "/p", "AXISGUARD_DISABLE": "1"}) is None
    config = GuardConfig.from_env({"AXISGUARD_PACK": "/p", "AXISGUARD_POLICY": "/q.yaml"})
    assert config is not None and config.mode == "guard" and config.pack == Path("/p")
    assert GuardConfig.from_env(config.to_env()) == config


def test_config_file_paths_are_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "guard.yaml").write_text("pack: packs/qwen\npolicy: strict.yaml\n")
    config = GuardConfig.from_env({"AXISGUARD_CONFIG": str(tmp_path / "guard.yaml")})
    assert config is not None and config.pack == tmp_path / "packs/qwen" and config.policy == tmp_path / "strict.yaml"
    (tmp_path / "bad.yaml").write_text("pack: x\nthreshold: 3\n")
    with pytest.raises(AxisguardError, match="unknown keys threshold"):
        GuardConfig.from_env({"AXISGUARD_CONFIG": str(tmp_path / "bad.yaml")})


def test_policy_without_pack_is_an_error() -> None:
    with pytest.raises(AxisguardError, match="without an axis pack"):
        GuardConfig.from_env({"AXISGUARD_POLICY": "/q.yaml"})


def test_capture_mode() -> None:
    config = GuardConfig.from_env({"AXISGUARD_CAPTURE_LAYERS": "3,7", "AXISGUARD_CAPTURE_POOLING": "mean"})
    assert config is not None and config.mode == "capture" and config.capture_layers == (3, 7)
    with pytest.raises(AxisguardError, match="allowed: last, mean"):
        GuardConfig.from_env({"AXISGUARD_CAPTURE_LAYERS": "3", "AXISGUARD_CAPTURE_POOLING": "max"})


def test_overrides_nested_and_flat() -> None:
    assert overrides_from_extra_args(None) == {}
    assert overrides_from_extra_args({"other": 1}) == {}
    assert overrides_from_extra_args({"axisguard": {"enabled": False}, "axisguard.r.threshold": 2.5}) == {
        "enabled": False, "r.threshold": 2.5}
    with pytest.raises(AxisguardError, match="must be a mapping"):
        overrides_from_extra_args({"axisguard": "off"})


# --- request ids and the verdict store ---------------------------------------------------------------


def test_client_ids_match_internal_ids() -> None:
    assert external_id("chatcmpl-abc-1f2e3d4c") == "chatcmpl-abc"
    assert external_id("0-deadbeef") == "0"
    assert external_id("no-suffix") == "no-suffix"
    assert id_matches("chatcmpl-abc", "chatcmpl-abc-1f2e3d4c")
    assert id_matches("cmpl-xyz", "cmpl-xyz-1-0badcafe")  # second prompt of a multi-prompt completion
    assert not id_matches("cmpl-xy", "cmpl-xyz-1-0badcafe")
    assert not id_matches("1", "10-0badcafe")


def test_n_samples_are_choices_in_order() -> None:
    # n > 1: vLLM's children are "<sample>_<parent internal id>" (the cause of the old 404)
    assert id_matches("chatcmpl-abc", "1_chatcmpl-abc-1f2e3d4c")
    assert not id_matches("chatcmpl-ab", "1_chatcmpl-abc-1f2e3d4c")
    assert choice_key("cmpl-x", "1_cmpl-x-2-0badcafe") == (2, 1)
    found = [(f"{j}_cmpl-x-{p}-0badcafe", {"p": p, "j": j}) for p in (1, 0) for j in (1, 0)]
    ordered = in_choice_order("cmpl-x", found + [("0_cmpl-y-0badcafe", {"other": 1})])
    assert [(v["p"], v["j"], v["index"]) for v in ordered] == [(0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 3)]


def test_verdict_store_is_bounded() -> None:
    store = VerdictStore(capacity=2)
    for i in range(3):
        store.put(f"r{i}-0000000{i}", {"request_id": f"r{i}"})
    assert len(store) == 2 and store.matching("r0") == [] and store.matching("r2") == [("r2-00000002", {"request_id": "r2"})]


# --- pack vs model --------------------------------------------------------------------------------------


def test_matching_pack_passes(tiny: dict) -> None:
    check_pack_matches(random_pack(tiny["name"], layer=1), served_model_from_folder(tiny["folder"]))


@pytest.mark.parametrize("change, message", [
    ({"hidden": TINY_HIDDEN * 2}, "hidden size"),
    ({"num_layers": 6}, "6 layers"),
    ({"architecture": "qwen2"}, "qwen2"),
])
def test_mismatched_pack_is_refused(tiny: dict, change: dict, message: str) -> None:
    pack = random_pack(tiny["name"], layer=1, **change)
    with pytest.raises(MismatchError, match=message):
        check_pack_matches(pack, served_model_from_folder(tiny["folder"]))


def test_pack_for_another_model_name_is_refused_unless_allowed(tiny: dict) -> None:
    pack = random_pack("some-other-finetune", layer=1)
    served = served_model_from_folder(tiny["folder"])
    with pytest.raises(MismatchError, match="some-other-finetune"):
        check_pack_matches(pack, served, allow_name_mismatch=False)
    check_pack_matches(pack, served, allow_name_mismatch=True)


def test_engine_refuses_a_mismatched_pack_before_starting(tiny: dict, tmp_path: Path) -> None:
    from tests.vllm_support import inprocess_engine

    wrong = random_pack(tiny["name"], layer=1, hidden=TINY_HIDDEN * 2).save(tmp_path / "wrong")
    with pytest.raises(MismatchError, match="hidden size"):
        with inprocess_engine(tiny["folder"], {"AXISGUARD_PACK": str(wrong)}):
            pass


# --- axisguard serve ------------------------------------------------------------------------------------


def serve(*args: str, env: dict[str, str | None] | None = None):
    from axisguard_cli.main import cli

    with environment(env or {}):
        return CliRunner().invoke(cli, ["serve", *args])


def test_serve_refuses_a_mismatched_pack(tiny: dict, tmp_path: Path) -> None:
    wrong = random_pack(tiny["name"], layer=1, num_layers=6).save(tmp_path / "wrong")
    result = serve("--model", str(tiny["folder"]), "--pack", str(wrong), "--dry-run")
    assert result.exit_code == 2
    assert "6 layers" in result.output and "axisguard adapt" in result.output


def test_serve_launch_plan(tiny: dict, tmp_path: Path) -> None:
    prom = tmp_path / "prom"
    prom.mkdir()
    (prom / "counter_1234.db").write_bytes(b"stale")
    result = serve("--model", str(tiny["folder"]), "--pack", str(tiny["pack"]), "--dry-run",
                   "--port", "8123", "--enable-prefix-caching",
                   env={"PROMETHEUS_MULTIPROC_DIR": str(prom), "VLLM_PLUGINS": None})
    assert result.exit_code == 0, result.output
    assert not list(prom.glob("*.db")), "a previous run's counters must not be added to this run's"
    command = result.output.strip().splitlines()[-1]
    assert "vllm.entrypoints.openai.api_server" in command
    assert "--port 8123" in command and f"--served-model-name {tiny['name']}" in command
    # vLLM's defaults (compiled, prefix caching) are kept; the user's own vLLM flags pass through
    assert command.endswith("--port 8123 --enable-prefix-caching")
    assert "--enforce-eager" not in command and "--no-enable-prefix-caching" not in command
    assert "VLLM_PLUGINS=" in result.output and "axisguard" in result.output.split("VLLM_PLUGINS=")[1].split()[0]
    assert f"AXISGUARD_PACK={tiny['pack']}" in result.output


# --- a vLLM without configuration is untouched ------------------------------------------------------------


UNTOUCHED = textwrap.dedent("""
    import json, os, sys
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if __name__ == "__main__":
        from vllm import LLM, SamplingParams
        from vllm.engine.arg_utils import EngineArgs
        from vllm.v1.worker.worker_base import WorkerWrapperBase
        env_before = dict(os.environ)
        llm = LLM(model=sys.argv[1], enforce_eager=True, max_model_len=128, dtype="float32",
                  kv_cache_memory_bytes=32 << 20)
        out = llm.generate(["hello"], SamplingParams(max_tokens=3, temperature=0.0), use_tqdm=False)
        config = llm.llm_engine.vllm_config
        worker = llm.llm_engine.model_executor.driver_worker.worker
        print(json.dumps({
            "engine_args_patched": hasattr(EngineArgs.create_engine_config, "__wrapped__"),
            "worker_patched": hasattr(WorkerWrapperBase, "axisguard_call"),
            "session": hasattr(worker, "_axisguard_session"),
            "prefix_caching": config.cache_config.enable_prefix_caching,
            "logits_processors": config.model_config.logits_processors,
            # vLLM sets a few variables of its own; the plugin, when configured, would set these:
            "env_changed": sorted(k for k in os.environ if os.environ.get(k) != env_before.get(k)
                                  and (k.startswith("AXISGUARD_") or k in ("VLLM_USE_V2_MODEL_RUNNER",
                                       "VLLM_PLUGINS", "PROMETHEUS_MULTIPROC_DIR"))),
            # forward hooks, or tapped layers (an instance `forward`: integrations.vllm.tap_op)
            "hooks": sum(len(m._forward_hooks) + ("forward" in vars(m)) for m in worker.model_runner.model.modules()),
            "tokens": len(out[0].outputs[0].token_ids),
        }))
        llm.llm_engine.engine_core.shutdown()
""")


UNTOUCHED_REPORT = {"engine_args_patched": False, "worker_patched": False, "session": False, "prefix_caching": True,
                    "logits_processors": None, "env_changed": [], "hooks": 0, "tokens": 3}


def run_probe(tiny: dict, tmp_path: Path, env: dict[str, str]) -> dict:
    script = tmp_path / "probe.py"
    script.write_text(UNTOUCHED)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AXISGUARD_", "VLLM_"))}
    proc = subprocess.run([sys.executable, str(script), str(tiny["folder"])], capture_output=True, text=True,
                          env={**clean, **env}, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("env", [{}, {"AXISGUARD_DISABLE": "1", "AXISGUARD_PACK": "/nonexistent/pack"}],
                         ids=["unconfigured", "kill-switch"])
def test_vllm_without_configuration_is_untouched(tiny: dict, tmp_path: Path, env: dict[str, str]) -> None:
    assert run_probe(tiny, tmp_path, env) == UNTOUCHED_REPORT


def test_the_probe_sees_a_configured_plugin(tiny: dict, tmp_path: Path) -> None:
    """The same probe on a configured vLLM: every difference it looks for shows up."""
    report = run_probe(tiny, tmp_path, {"AXISGUARD_PACK": str(tiny["pack"])})
    assert report == {"engine_args_patched": True, "worker_patched": True, "session": True, "prefix_caching": True,
                      "logits_processors": ["integrations.vllm.stop:GuardStopLogitsProcessor"],
                      "env_changed": ["VLLM_USE_V2_MODEL_RUNNER"], "hooks": 1, "tokens": 3}


def test_endpoint_plugin_is_skipped_unless_configured(tiny: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.plugins import load_endpoint_plugins

    monkeypatch.setenv("VLLM_PLUGINS", "axisguard")
    monkeypatch.delenv("AXISGUARD_PACK", raising=False)
    assert load_endpoint_plugins(("generate",)) == []
    monkeypatch.setenv("AXISGUARD_PACK", str(tiny["pack"]))
    assert [p.name for p in load_endpoint_plugins(("generate",))] == ["axisguard"]
