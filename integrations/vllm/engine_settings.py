"""Engine settings the guard needs, applied in the process that builds vLLM's config (API server / ``LLM``).

Only when axisguard is configured (see ``config``); each change is logged with its reason:

* **eager mode** (``enforce_eager=True``): the guard is a set of Python forward hooks; torch.compile
  and CUDA graphs replay a captured graph that skips them (scores would silently stop and steering
  would not be applied). We enforce eager rather than ship a compile-safe custom op: simpler, and
  the cost is measured in ``bench/results/`` (eager vs compiled vanilla).
* **no prefix caching** (``enable_prefix_caching=False``): a cached prefix is never recomputed, so its
  tokens would skip the hooks (prompt scores of a repeated prompt would be wrong: only the uncached
  tail would be scored) and a steered request would reuse KV computed without steering (and vice
  versa). Salting the cache per steering state cannot work either: whether a request is steered is
  decided while its prompt is read.
* **model runner V1** (``VLLM_USE_V2_MODEL_RUNNER=0``, set by the plugin): the row map reads V1's
  persistent batch.
* the stop / override-validation **logits processor** (``stop``) is added to ``logits_processors``.

Refused with a clear error: pipeline parallelism (hooked layers would live on different stages),
speculative decoding (draft tokens are not request rows the guard understands), and a pack that
does not match the served model (``model_check``), so the server never starts with a wrong pack.
"""

from __future__ import annotations

import logging
from typing import Any

from guard.errors import AxisguardError
from guard.pack import AxisPack
from integrations.vllm.config import GuardConfig
from integrations.vllm.model_check import check_pack_matches, served_model_from_hf_config
from integrations.vllm.stop import QUALNAME as STOP_PROCESSOR

log = logging.getLogger(__name__)


def apply_required_settings(engine_args: Any, config: GuardConfig) -> None:
    """Adjust ``EngineArgs`` in place before vLLM builds its config."""
    if not engine_args.enforce_eager:
        log.warning("axisguard: enforcing eager mode (enforce_eager=True): the guard's layer hooks do not run "
                    "inside compiled graphs / CUDA graphs")
        engine_args.enforce_eager = True
    if engine_args.enable_prefix_caching is not False:
        log.warning("axisguard: disabling prefix caching: cached prefixes skip the guard's hooks (wrong prompt "
                    "scores) and would reuse unsteered KV for steered requests")
        engine_args.enable_prefix_caching = False
    if config.mode == "guard":
        processors = list(engine_args.logits_processors or [])
        if STOP_PROCESSOR not in processors:
            processors.append(STOP_PROCESSOR)
        engine_args.logits_processors = processors


def check_engine_config(vllm_config: Any, config: GuardConfig, pack: AxisPack | None = None) -> None:
    """Refuse configurations the guard cannot serve correctly (raises ``AxisguardError``)."""
    if vllm_config.parallel_config.pipeline_parallel_size > 1:
        raise AxisguardError(
            "axisguard does not support pipeline parallelism (the guarded layers would be split across stages)",
            "use tensor parallelism (--tensor-parallel-size) instead, or unset AXISGUARD_PACK",
        )
    if vllm_config.speculative_config is not None:
        raise AxisguardError(
            "axisguard does not support speculative decoding (draft tokens are not request rows it can score)",
            "remove --speculative-config, or unset AXISGUARD_PACK",
        )
    if vllm_config.use_v2_model_runner:
        raise AxisguardError(
            "axisguard needs vLLM's V1 model runner, but the V2 runner is selected",
            "unset VLLM_USE_V2_MODEL_RUNNER (axisguard sets it to 0 itself)",
        )
    if config.mode == "guard":
        if pack is None:
            from integrations.vllm.guard_consumer import load_pack_and_policy

            pack, _ = load_pack_and_policy(config.pack, config.policy)  # type: ignore[arg-type]
        model_config = vllm_config.model_config
        check_pack_matches(pack, served_model_from_hf_config(model_config.model, model_config.hf_config))
