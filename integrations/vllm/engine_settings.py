"""Engine settings the guard needs, applied in the process that builds vLLM's config (API server / ``LLM``).

Only when axisguard is configured (see ``config``); each change is logged with its reason.

What the guard does NOT change any more (each mode is guarded correctly):

* **compilation** stays vLLM's default: the guard reads and steers the residual stream through a
  ``torch.library`` custom op after each guarded layer (``tap_op``), one opaque node that
  torch.compile keeps; on CPU vLLM compiles one inductor graph with the op inside. ``--enforce-eager``
  (``enforce_eager=True``) is the switch to force eager: the same op then runs eagerly.
* **CUDA graphs**: the op is added to vLLM's graph splitting ops and runs between piecewise graphs;
  a FULL cudagraph mode (the GPU default ``FULL_AND_PIECEWISE``) is switched to ``PIECEWISE`` with a
  logged warning, because a full graph would replay the forward without the tap (``tap_op``).
* **prefix caching** stays on (vLLM's default): the last prompt token is always computed, so prompt
  scores are unchanged by a hit; a cached prefix's tokens are not counted as scored; only blocks
  before a request's last prompt token are ever cached, so steered KV is never reused
  (``prefix_cache``).

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
