"""The ``vllm.general_plugins`` entry point: vLLM calls ``register()`` once in every process it starts.

Unconfigured (no ``AXISGUARD_PACK``/``AXISGUARD_CONFIG``, or ``AXISGUARD_DISABLE=1``), ``register``
returns at once: no patch, no hook, no environment change, so a vLLM that merely has axisguard
installed behaves exactly as without it.

Configured, it installs three small interceptions (idempotent):

* ``EngineArgs.create_engine_config``, in the process that builds the engine config: applies the
  settings the guard needs and refuses what it cannot serve, including a pack that does not match
  the model, before any engine process starts (``engine``; CUDA-graph mode: ``tap_op``);
* ``KVCacheManager``, in the engine-core process: a guarded engine caches only blocks that cannot
  hold steered KV (``prefix_cache``);
* ``WorkerWrapperBase.load_model``, in the worker processes: right after the model is loaded, the
  guard session taps its decoder layers (``worker.attach``), before vLLM's first (compiling)
  forward. ``WorkerWrapperBase`` wraps every worker class on every executor (uniproc, multiproc, Ray), so this is the one place that sees the
  loaded model of any platform's worker. It also gains ``axisguard_call`` for ``collective_rpc``.

Both interceptions re-read the configuration when they run, so engines created later in the same
process follow the environment at that time.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from integrations.vllm.config import GuardConfig, is_configured

log = logging.getLogger(__name__)

_installed = False


def register() -> None:
    """Entry point (``vllm.general_plugins``): install the guard only when it is configured."""
    if not is_configured():
        return
    install()


def install() -> None:
    """Install the interceptions (idempotent); normally called by ``register``."""
    global _installed
    if _installed:
        return
    # The row map reads the V1 runner's persistent batch; keep vLLM from picking the V2 runner.
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    _patch_engine_args()
    _patch_worker_wrapper()
    from integrations.vllm.prefix_cache import install_prefix_cache_policy

    install_prefix_cache_policy()
    _installed = True


def _patch_engine_args() -> None:
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_engine_config

    @functools.wraps(original)
    def create_engine_config(self: Any, *args: Any, **kwargs: Any) -> Any:
        config = GuardConfig.from_env()
        if config is None:
            return original(self, *args, **kwargs)
        from integrations.vllm.engine import apply_required_settings, check_engine_config
        from integrations.vllm.tap_op import adapt_graph_settings

        apply_required_settings(self, config)
        vllm_config = original(self, *args, **kwargs)
        check_engine_config(vllm_config, config)
        adapt_graph_settings(vllm_config)
        return vllm_config

    EngineArgs.create_engine_config = create_engine_config  # type: ignore[method-assign]


def _patch_worker_wrapper() -> None:
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = self.worker.load_model(*args, **kwargs)
        from integrations.vllm.worker import attach

        attach(self.worker)
        return result

    def axisguard_call(self: Any, op: str, *args: Any) -> Any:
        from integrations.vllm.worker import rpc

        return rpc(self.worker, op, *args)

    WorkerWrapperBase.load_model = load_model  # type: ignore[attr-defined]
    WorkerWrapperBase.axisguard_call = axisguard_call  # type: ignore[attr-defined]
