"""The only place the chart tests import axisguard's own code (paths may move; fix them here).

The chart must use what the running code really exports: metric names come from ``GuardMetrics`` on a
private registry, packs for the check and e2e tests from the vLLM tests' pack factory.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

# Suffixes prometheus-client adds to a family's samples, by type.
_SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                    "gauge": ("",), "info": ("_info",), "summary": ("", "_sum", "_count", "_created")}


def exported_metric_names() -> set[str]:
    """Every sample name the guard's metrics can expose (read from a live registry)."""
    from guard.metrics import GuardMetrics

    registry = CollectorRegistry()
    GuardMetrics("chart-test", registry=registry)
    return {family.name + suffix for family in registry.collect() for suffix in _SAMPLE_SUFFIXES[family.type]}


def write_random_pack(folder: Path, model: str, hidden: int, num_layers: int, layer: int,
                      architecture: str = "llama") -> tuple[Path, str]:
    """A pack with random unit axes (refusal, toxicity) for ``model``; returns its folder and manifest hash."""
    import json

    from tests.vllm_support import random_pack

    pack = random_pack(model, layer=layer, hidden=hidden, num_layers=num_layers, architecture=architecture)
    path = pack.save(folder)
    return path, json.loads((path / "manifest.json").read_text())["manifest_sha256"]


def model_folder(name: str) -> Path:
    """A zoo model's local folder (pulled into the axisguard cache on first use)."""
    from integrations.model_resolution import resolve_model

    return Path(resolve_model(name).path)


def free_port() -> int:
    from scripts.guarded_server import free_port as pick

    return pick()


def http_json(url: str, timeout: float = 60) -> tuple[int, object]:
    from scripts.guarded_server import http_json as get

    return get(url, timeout=timeout)


def server_from_command(argv: list[str], env: dict[str, str], model: str, port: int, log_path: Path,
                        startup_timeout_s: float):
    """The project's guarded-server harness (start, /health wait, process-group stop, chat, metrics),
    running ``argv`` (the chart's own server command) instead of ``axisguard serve``."""
    from scripts.guarded_server import GuardedServer

    server = GuardedServer(model, pack="unused", port=port, log_path=log_path, startup_timeout_s=startup_timeout_s)
    server.command, server.env = argv, env
    return server
