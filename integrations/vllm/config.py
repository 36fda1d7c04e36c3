"""How the vLLM plugin is configured: environment variables (or one config file), read in every process.

vLLM starts several processes (API server, engine core, workers) and loads the plugin in each of
them, so configuration travels by environment, which children inherit:

* ``AXISGUARD_PACK``: the axis pack folder (required to guard);
* ``AXISGUARD_POLICY``: a policy YAML/JSON (default: the catalogue's default policy);
* ``AXISGUARD_CONFIG``: a YAML/JSON file with ``pack``/``policy``/``pack_sha256`` keys, instead of the
  variables;
* ``AXISGUARD_PACK_SHA256``: pin the pack by its ``manifest_sha256`` (or ``pack_sha256`` in the config
  file): any other pack, even a self-consistent one, is refused wherever the configuration is read
  (``axisguard serve``, the engine, every worker), before the engine starts;
* ``AXISGUARD_DISABLE=1``: kill switch, wins over everything (the plugin then does nothing at all);
* ``AXISGUARD_VERDICT_HISTORY``: how many finished requests' verdicts the worker keeps (default 10000).

``AXISGUARD_CAPTURE_LAYERS``/``AXISGUARD_CAPTURE_POOLING`` are set by the vLLM extraction path
(``integrations.vllm.capture``), not by operators: they make the hooks record pooled activations
instead of guarding.

No configuration (the normal case for a vLLM that merely has axisguard installed) means
``GuardConfig.from_env()`` returns None and the plugin installs nothing.

**Metrics directory**: the Prometheus multiprocess directory puts the worker's ``axisguard_`` metrics on vLLM's ``/metrics``.

The guard's metrics are written in the worker process; vLLM's API server serves ``/metrics`` from a
``MultiProcessCollector`` over ``PROMETHEUS_MULTIPROC_DIR`` when that variable is set before any
process imports ``prometheus_client``. ``axisguard serve`` therefore sets it before it execs the
server. Counter files survive a restart and would be summed with the new process's counters
(totals doubled), so the directory is emptied at every start; a stable per-port location keeps old
runs from piling up in temp space.

**Per-request overrides** are carried in ``SamplingParams.extra_args`` (``vllm_xargs`` over HTTP).

Two spellings, so that both offline and HTTP clients can use them:

* nested (offline): ``SamplingParams(extra_args={"axisguard": {"enabled": False}})`` or
  ``{"axisguard": {"refusal_steer": {"threshold": 2.5}}}``;
* flat (HTTP ``vllm_xargs`` allows only flat values): ``{"axisguard.enabled": "false",
  "axisguard.refusal_steer.threshold": 2.5}``.

The keys after the prefix are the policy's override keys (``enabled``, ``<rule>.<field>``), checked
against the policy's ``allow_overrides`` by ``guard.overrides.resolve_overrides``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from guard.errors import AxisguardError
from guard.tensor_folder import check_pinned_digest
from guard.text_files import read_user_text

log = logging.getLogger(__name__)


ENV_PACK = "AXISGUARD_PACK"
ENV_POLICY = "AXISGUARD_POLICY"
ENV_CONFIG = "AXISGUARD_CONFIG"
ENV_DISABLE = "AXISGUARD_DISABLE"
ENV_PACK_SHA256 = "AXISGUARD_PACK_SHA256"
ENV_VERDICT_HISTORY = "AXISGUARD_VERDICT_HISTORY"
ENV_CAPTURE_LAYERS = "AXISGUARD_CAPTURE_LAYERS"
ENV_CAPTURE_POOLING = "AXISGUARD_CAPTURE_POOLING"

_TRUE = {"1", "true", "yes", "on"}
CONFIG_KEYS = ("pack", "policy", "pack_sha256")
_VERIFIED_PINS: set[tuple[str, str]] = set()  # (pack, pin) pairs already checked in this process
DEFAULT_VERDICT_HISTORY = 10_000

Mode = Literal["guard", "capture"]
Pooling = Literal["last", "mean"]


@dataclass(frozen=True)
class GuardConfig:
    """What the plugin should do in this vLLM: guard with a pack (+ policy), or capture activations."""

    mode: Mode
    pack: Path | None = None
    policy: Path | None = None
    capture_layers: tuple[int, ...] = ()
    capture_pooling: Pooling = "last"
    verdict_history: int = DEFAULT_VERDICT_HISTORY
    pack_sha256: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GuardConfig | None:
        """The configuration in ``environ`` (default ``os.environ``), or None when unconfigured/disabled."""
        env = os.environ if environ is None else environ
        if env.get(ENV_DISABLE, "").strip().lower() in _TRUE:
            return None
        history = _int_env(env, ENV_VERDICT_HISTORY, DEFAULT_VERDICT_HISTORY)
        if env.get(ENV_CAPTURE_LAYERS, "").strip():
            pooling = env.get(ENV_CAPTURE_POOLING, "last").strip() or "last"
            if pooling != "last" and pooling != "mean":
                raise AxisguardError(f"{ENV_CAPTURE_POOLING}={pooling!r} is not valid", "allowed: last, mean")
            layers = tuple(int(x) for x in env[ENV_CAPTURE_LAYERS].split(",") if x.strip())
            mode: Literal["last", "mean"] = "mean" if pooling == "mean" else "last"
            return cls(mode="capture", capture_layers=layers, capture_pooling=mode, verdict_history=history)
        pack, policy = env.get(ENV_PACK, "").strip(), env.get(ENV_POLICY, "").strip()
        pin = env.get(ENV_PACK_SHA256, "").strip()
        config_file = env.get(ENV_CONFIG, "").strip()
        if config_file:
            file_pack, file_policy, file_pin = _read_config_file(Path(config_file))
            pack, policy, pin = pack or file_pack, policy or file_policy, pin or file_pin
        if not pack:
            if policy or config_file:
                raise AxisguardError(
                    "axisguard is configured without an axis pack",
                    f"set {ENV_PACK}=PACK_FOLDER (written by `axisguard adapt`), or unset {ENV_POLICY}/{ENV_CONFIG}",
                )
            return None
        if pin and (pack, pin) not in _VERIFIED_PINS:
            # Once per process: the configuration is re-read per request (override validation), and
            # the pack a process loaded at start is the one it serves, whatever happens to the folder later.
            check_pinned_digest(Path(pack).expanduser(), pin, ENV_PACK_SHA256)
            _VERIFIED_PINS.add((pack, pin))
        return cls(
            mode="guard",
            pack=Path(pack).expanduser(),
            policy=Path(policy).expanduser() if policy else None,
            verdict_history=history,
            pack_sha256=pin,
        )

    def to_env(self) -> dict[str, str]:
        """Environment variables that reproduce this configuration in child processes."""
        if self.mode == "capture":
            return {
                ENV_CAPTURE_LAYERS: ",".join(str(layer) for layer in self.capture_layers),
                ENV_CAPTURE_POOLING: self.capture_pooling,
                ENV_VERDICT_HISTORY: str(self.verdict_history),
            }
        env = {ENV_PACK: str(self.pack), ENV_VERDICT_HISTORY: str(self.verdict_history)}
        if self.policy is not None:
            env[ENV_POLICY] = str(self.policy)
        if self.pack_sha256:
            env[ENV_PACK_SHA256] = self.pack_sha256
        return env


def serving_config(pack: Path, policy: Path | None, environ: Mapping[str, str] | None = None) -> GuardConfig:
    """The configuration ``axisguard serve`` hands to vLLM: its own ``--pack``/``--policy``, and the
    operator's other settings (verdict history, pack pin) from the environment, which ``to_env`` would
    otherwise overwrite with defaults."""
    env = os.environ if environ is None else environ
    return GuardConfig(mode="guard", pack=pack, policy=policy,
                       verdict_history=_int_env(env, ENV_VERDICT_HISTORY, DEFAULT_VERDICT_HISTORY),
                       pack_sha256=env.get(ENV_PACK_SHA256, "").strip())


def is_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Cheap check used by the plugin entry point; a broken configuration counts as configured (it must fail loudly)."""
    try:
        return GuardConfig.from_env(environ) is not None
    except AxisguardError:
        return True


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise AxisguardError(f"{name}={raw!r} is not an integer", f"set {name} to a positive integer") from None
    if value < 1:
        raise AxisguardError(f"{name}={raw!r} must be at least 1", f"set {name} to a positive integer")
    return value


def _read_config_file(path: Path) -> tuple[str, str, str]:
    text = read_user_text(path, f"{ENV_CONFIG} file", "point it at a YAML or JSON file with 'pack' and optional 'policy'")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise AxisguardError(f"{path}: not valid YAML/JSON ({exc})", "fix the syntax") from None
    if not isinstance(data, Mapping):
        raise AxisguardError(f"{path}: expected a mapping with 'pack' and optional 'policy'", "see the README")
    unknown = sorted(map(str, set(data) - set(CONFIG_KEYS)))
    if unknown:
        raise AxisguardError(f"{path}: unknown keys {', '.join(unknown)}", f"allowed keys: {', '.join(CONFIG_KEYS)}")
    for key in CONFIG_KEYS:
        if data.get(key) is not None and not isinstance(data[key], str):
            raise AxisguardError(f"{path}: {key} must be a string, got {type(data[key]).__name__}",
                                 "pack/policy: a folder or file path; pack_sha256: the pack's manifest_sha256")
    pin = data.get("pack_sha256")
    base = path.parent

    def resolve(value: object) -> str:
        if value in (None, ""):
            return ""
        p = Path(str(value)).expanduser()
        return str(p if p.is_absolute() else base / p)

    return resolve(data.get("pack")), resolve(data.get("policy")), (pin or "").strip()


# --- the Prometheus multiprocess directory -----------------------------------------------------------


def default_metrics_dir(home: Path, port: int | str) -> Path:
    return home / "run" / f"prometheus-{port}"


def prepare_metrics_dir(path: Path) -> Path:
    """Create ``path`` if needed and delete the metric files a previous run left in it."""
    path.mkdir(parents=True, exist_ok=True)
    stale = sorted(path.glob("*.db"))
    for file in stale:
        file.unlink()
    if stale:
        log.info("axisguard: removed %d stale Prometheus files from %s (a previous run's counters)", len(stale), path)
    return path


# --- per-request overrides ------------------------------------------------------------------------


OVERRIDES_KEY = "axisguard"
OVERRIDES_PREFIX = OVERRIDES_KEY + "."


def overrides_from_extra_args(extra_args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The axisguard overrides in a request's ``extra_args`` (empty when there are none)."""
    if not extra_args:
        return {}
    found: dict[str, Any] = {}
    nested = extra_args.get(OVERRIDES_KEY)
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise AxisguardError(
                f"extra_args[{OVERRIDES_KEY!r}] must be a mapping of override keys, got {nested!r}",
                f'e.g. extra_args={{"{OVERRIDES_KEY}": {{"enabled": false}}}} or vllm_xargs={{"{OVERRIDES_PREFIX}enabled": "false"}}',
            )
        found.update(nested)
    for key, value in extra_args.items():
        if isinstance(key, str) and key.startswith(OVERRIDES_PREFIX):
            found[key[len(OVERRIDES_PREFIX):]] = value
    return found
