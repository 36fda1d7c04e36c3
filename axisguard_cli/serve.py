"""`axisguard serve`: vLLM's OpenAI-compatible server with the guard attached, after checking the pack fits the model.

Everything after the known options goes to vLLM unchanged, e.g.

    axisguard serve --model smollm2-135m --pack out/pack --policy policy.yaml --port 8000 --max-model-len 2048

The pack is loaded and checked against the model's config (hidden size, layers, architecture,
name) and the policy against the pack BEFORE the server starts. Then the process execs
``python -m vllm.entrypoints.openai.api_server`` with vLLM's own defaults (compiled model, prefix
caching on; ``--enforce-eager`` forces eager, see ``integrations.vllm.engine``), the
axisguard plugins enabled (``VLLM_PLUGINS``),
and a clean ``PROMETHEUS_MULTIPROC_DIR`` so the guard's metrics show on ``/metrics``.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def _vllm_plugins(current: str | None) -> str:
    """``VLLM_PLUGINS`` that loads axisguard's endpoints without dropping other installed general plugins."""
    from importlib.metadata import entry_points

    if current is not None:
        names = [n.strip() for n in current.split(",") if n.strip()]
    else:
        # Setting the variable turns it into an allow-list: keep every general plugin that would load today.
        names = sorted({ep.name for ep in entry_points(group="vllm.general_plugins")})
    if "axisguard" not in names:
        names.append("axisguard")
    return ",".join(names)


def _option_value(args: tuple[str, ...], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def build_launch(model: str, pack: str, policy: str | None, allow_name_mismatch: bool,
                 vllm_args: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """Validate the pair and return the server's argv and environment (nothing is started)."""
    from guard.errors import AxisguardError
    from integrations.model_resolution import resolve_model
    from integrations.model_zoo import axisguard_home
    from integrations.vllm.config import default_metrics_dir, prepare_metrics_dir, serving_config
    from integrations.vllm.engine import (
        ENV_ALLOW_NAME_MISMATCH,
        check_pack_matches,
        served_model_from_folder,
    )
    from probes.policies import load_pack_and_policy

    if _option_value(vllm_args, "--model") is not None:
        raise AxisguardError("pass the model once, as `axisguard serve --model M`", "remove --model from the vLLM arguments")
    resolved = resolve_model(model)
    pack_path = Path(pack).expanduser().resolve()
    policy_path = Path(policy).expanduser().resolve() if policy else None
    loaded_pack, _ = load_pack_and_policy(pack_path, policy_path, warn=True)
    check_pack_matches(loaded_pack, served_model_from_folder(resolved.path), allow_name_mismatch=allow_name_mismatch)

    config = serving_config(pack_path, policy_path)
    env = dict(os.environ)
    for key in ("AXISGUARD_CONFIG", "AXISGUARD_CAPTURE_LAYERS", "AXISGUARD_CAPTURE_POOLING"):
        env.pop(key, None)
    env.update(config.to_env())
    if allow_name_mismatch:
        env[ENV_ALLOW_NAME_MISMATCH] = "1"
    env["VLLM_PLUGINS"] = _vllm_plugins(os.environ.get("VLLM_PLUGINS"))
    env["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    port = _option_value(vllm_args, "--port") or "8000"
    prom = Path(env["PROMETHEUS_MULTIPROC_DIR"]) if env.get("PROMETHEUS_MULTIPROC_DIR") else \
        default_metrics_dir(axisguard_home(), port)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(prepare_metrics_dir(prom))

    argv = [sys.executable, "-m", SERVER_MODULE, "--model", str(resolved.path)]
    if _option_value(vllm_args, "--served-model-name") is None:
        argv += ["--served-model-name", resolved.name]
    # vLLM's defaults (compiled model, prefix caching) are kept: the guard's tap op runs in compiled
    # graphs and the cache never shares steerable KV (integrations.vllm.tap_op / prefix_cache).
    # `--enforce-eager` among vllm_args forces eager mode.
    argv += list(vllm_args)
    return argv, env


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--model", "model", required=True, help="zoo name or local model folder")
@click.option("--pack", "pack", required=True, type=click.Path(exists=True, file_okay=False),
              help="axis pack folder (from `axisguard adapt`) built for this model")
@click.option("--policy", "policy", type=click.Path(exists=True, dir_okay=False),
              help="policy YAML/JSON (default: the catalogue's default policy)")
@click.option("--allow-name-mismatch", is_flag=True,
              help="accept a pack recorded for another model name (same shape), e.g. a renamed folder")
@click.option("--dry-run", is_flag=True, help="check the pair, print the server command and exit")
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def command(model: str, pack: str, policy: str | None, allow_name_mismatch: bool, dry_run: bool,
            vllm_args: tuple[str, ...]) -> None:
    """Serve MODEL with vLLM's OpenAI-compatible server, guarded by PACK (extra arguments go to vLLM)."""
    from integrations.vllm.config import GuardConfig

    argv, env = build_launch(model, pack, policy, allow_name_mismatch, vllm_args)
    shown = {k: env[k] for k in sorted(env) if k.startswith(("AXISGUARD_", "VLLM_PLUGINS", "VLLM_USE_V2",
                                                               "PROMETHEUS_MULTIPROC_DIR"))}
    click.echo("axisguard: pack matches the model; starting the guarded server:", err=True)
    if GuardConfig.from_env(env) is None:
        click.echo("axisguard: warning: AXISGUARD_DISABLE is set, the server will run WITHOUT the guard", err=True)
    click.echo("  " + " ".join(f"{k}={shlex.quote(v)}" for k, v in shown.items()), err=True)
    click.echo("  " + shlex.join(argv), err=True)
    if dry_run:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env)
