"""Offline access to the guard's verdicts for ``vllm.LLM`` users.

    outputs = llm.generate(prompts, params)
    verdicts = attach_verdicts(llm, outputs)        # also sets output.axisguard_verdict
    get_verdict(llm, outputs[0].request_id)          # {"scores": ..., "fired": ..., "stopped": ...}

Verdicts live in the worker (another process unless ``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so these
go through ``LLM.collective_rpc``. The verdict JSON is the runtime's ``Verdict.to_json()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _call(llm: Any, op: str, *args: Any) -> Any:
    results = llm.collective_rpc("axisguard_call", args=(op, *args))
    return next((r for r in results if r is not None), None)


def get_verdicts(llm: Any, request_id: str) -> list[dict[str, Any]]:
    """Every verdict covered by a request id (one per prompt/sample), running or finished."""
    return list(_call(llm, "verdicts", str(request_id)) or [])


def get_verdict(llm: Any, request_id: str) -> dict[str, Any] | None:
    """The verdict of one request (``RequestOutput.request_id``), or None if the guard has none."""
    verdicts = get_verdicts(llm, request_id)
    return verdicts[0] if verdicts else None


def attach_verdicts(llm: Any, outputs: Sequence[Any]) -> list[dict[str, Any] | None]:
    """Look up each output's verdict and set it as ``output.axisguard_verdict``; returns them in order."""
    per_output = _call(llm, "verdicts_many", [str(o.request_id) for o in outputs]) or [[] for _ in outputs]
    found = []
    for output, verdicts in zip(outputs, per_output, strict=True):
        verdict = verdicts[0] if verdicts else None
        output.axisguard_verdict = verdict
        found.append(verdict)
    return found


def guard_status(llm: Any) -> dict[str, Any] | None:
    """Active requests, errors caught by stage, hooked layers (None when the guard is not attached)."""
    return _call(llm, "status")
