"""The runtime ``Guard`` as a step consumer of the vLLM hooks (see ``integrations.vllm.session``).

It only adapts shapes: the session hands over a step's rows as ``StepRows``; the guard wants the
facade's ``RowMap`` on the hidden states' device, and verdicts leave the worker as JSON dicts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from guard.errors import AxisguardError
from guard.pack import AxisPack
from guard.policy import Policy, check_against_pack, default_policy, load_policy
from guard.runtime import Guard
from integrations.vllm.row_mapping import StepRows

log = logging.getLogger(__name__)

# vLLM-side failure points -> the guard's bounded ``stage`` label set (``guard.metrics.ERROR_STAGES``).
_GUARD_STAGE = {
    "lifecycle": "start", "start_request": "start", "row_map": "score", "hook": "score",
    "should_stop": "policy", "finish_request": "finish", "verdict": "finish",
}


def load_pack_and_policy(pack_path: Path, policy_path: Path | None, warn: bool = False) -> tuple[AxisPack, Policy]:
    """Load both artifacts and refuse a policy that cannot run on this pack (``warn``: log its warnings;
    the ``Guard`` logs them itself when it is built)."""
    pack = AxisPack.load(pack_path)
    policy = load_policy(policy_path) if policy_path is not None else default_policy()
    check = check_against_pack(policy, pack)
    if not check.ok:
        raise AxisguardError(
            f"policy {policy.name!r} cannot run on pack {pack_path}:\n" + "\n".join(f"  - {e}" for e in check.errors),
            f"check it with `axisguard policy check POLICY --pack {pack_path}`",
        )
    for warning in check.warnings if warn else ():
        log.warning("axisguard policy %s: %s", policy.name, warning)
    return pack, policy


def make_metrics(model_name: str) -> Any:
    """The guard's Prometheus metrics (multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set), or None."""
    try:
        from guard.metrics import GuardMetrics
    except ImportError:  # the metrics module is optional for the plumbing
        return None
    return GuardMetrics(model_name=model_name)


class GuardConsumer:
    """Feeds every step to a ``Guard``; returns its steering delta."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.layers = sorted(set(guard.layers))

    def start_request(self, request_id: str, overrides: Mapping[str, Any] | None = None) -> None:
        self.guard.start_request(request_id, overrides or None)

    def on_step(self, layer: int, hidden: torch.Tensor, step: StepRows) -> torch.Tensor | None:
        return self.guard.on_hidden(layer, hidden, step.row_map())

    def should_stop(self, request_id: str) -> bool:
        return self.guard.should_stop(request_id)

    def finish_request(self, request_id: str) -> dict[str, Any] | None:
        verdict = self.guard.finish_request(request_id)
        return verdict.to_json() if verdict is not None else None

    def verdict(self, request_id: str) -> dict[str, Any] | None:
        try:
            return self.guard.verdict(request_id).to_json()
        except KeyError:  # not started yet, or already finished
            return None

    def report_error(self, stage: str, exc: BaseException, request_ids: list[str]) -> None:
        """Errors caught in the vLLM glue count and act like the guard's own (metrics, fail-open/closed)."""
        self.guard.record_error(_GUARD_STAGE.get(stage, "score"), exc, request_ids)

    def active_requests(self) -> int:
        return self.guard.active_requests()
