"""The ``stop`` action, and admission-time validation of per-request overrides: one vLLM logits processor.

**Stop.** When the guard decides to stop a request, its next sampled token is forced to the
request's end-of-sequence token (all other logits to -inf), so vLLM finishes it the normal way:
vLLM reports ``finish_reason == "stop"`` with whatever was generated so far; on the server the
in-band middleware (``inband``) turns that into ``"content_filter"`` (and the rule's ``stop.message``
when nothing was generated), and the verdict (``stopped: true``, the rule that fired) tells why. A decision made while the
prompt is read therefore yields an empty completion. Requests with ``ignore_eos`` and no stop
token ids cannot be ended this way; they run to ``max_tokens`` with ``stopped: true`` in the verdict.

**Validation.** vLLM calls ``validate_params`` in the API server for every request, before it is
scheduled, so a bad override (``vllm_xargs`` / ``extra_args``, see ``config``) is rejected with
HTTP 400 (offline: ``ValueError``) naming the key, the value and what the policy allows.

The plugin adds this processor to the engine's ``logits_processors`` (see ``engine``).
It is not argmax-invariant, so it runs under greedy decoding too.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from guard.errors import AxisguardError
from guard.overrides import resolve_overrides
from guard.policy import Policy
from integrations.vllm.config import GuardConfig, overrides_from_extra_args
from integrations.vllm.policy_reload import current_policy
from integrations.vllm.session import session_for
from probes.policies import policy_or_default

QUALNAME = "integrations.vllm.stop:GuardStopLogitsProcessor"


@functools.lru_cache(maxsize=4)
def _policy(path: Path | None) -> Policy:
    return policy_or_default(path)


def stop_token_of(sampling_params: Any) -> int | None:
    """A token that makes vLLM finish this request: its EOS, else its first stop token id."""
    eos = getattr(sampling_params, "eos_token_id", None)
    if eos is not None:
        return int(eos)
    stop_ids = getattr(sampling_params, "stop_token_ids", None) or []
    return int(stop_ids[0]) if stop_ids else None


class GuardStopLogitsProcessor(LogitsProcessor):
    """Forces EOS for requests the guard stops; rejects invalid overrides at admission."""

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        try:
            overrides = overrides_from_extra_args(getattr(sampling_params, "extra_args", None))
            if not overrides:
                return
            config = GuardConfig.from_env()
            if config is None or config.mode != "guard":
                return
            resolve_overrides(current_policy() or _policy(config.policy), overrides)
        except AxisguardError as exc:
            raise ValueError(f"axisguard: {exc}") from None

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.vllm_config = vllm_config

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        # Rows are mapped to requests from the model runner at apply time, so nothing to track here.
        return None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        session = session_for(self.vllm_config)
        if session is None or session.consumer is None:
            return logits
        runner = session.runner
        request_ids = list(runner.input_batch.req_ids[: runner.input_batch.num_reqs])
        if logits.shape[0] != len(request_ids):  # speculative decoding rows; refused at start-up anyway
            return logits
        for row in session.stop_rows(request_ids):
            state = runner.requests.get(request_ids[row])
            token = stop_token_of(state.sampling_params) if state is not None else None
            if token is None:
                continue
            logits[row] = float("-inf")
            logits[row, token] = 0.0
        return logits
