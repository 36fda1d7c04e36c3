"""Offline access to the guard's verdicts for ``vllm.LLM`` users.

    outputs = llm.generate(prompts, params)
    verdicts = attach_verdicts(llm, outputs)        # also sets output.axisguard_verdict
    get_verdict(llm, outputs[0].request_id)          # {"scores": ..., "fired": ..., "stopped": ...}

Verdicts live in the worker (another process unless ``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so these
go through ``LLM.collective_rpc``. The verdict JSON is the runtime's ``Verdict.to_json()``.

Finished requests' verdicts, kept (bounded) in the worker so clients can read them after the response.

vLLM renames every request internally: the id a client sees (``chatcmpl-abc``, ``cmpl-abc``, or
``"0"`` from ``LLM.generate``) gets a random ``-xxxxxxxx`` suffix inside the engine, a multi-prompt
completion gets ``-<i>`` sub-ids, and ``n > 1`` adds per-sample children. ``matching`` therefore
accepts the external id and returns every internal request it covers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from integrations.vllm.choices import choice_key, external_id

__all__ = ["VerdictStore", "attach_verdicts", "external_id", "get_verdict", "get_verdicts", "guard_status", "id_matches"]


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
    """Look up each output's verdict and set it as ``output.axisguard_verdict`` (with ``n > 1``, every
    sample's as ``output.axisguard_verdicts``, in ``output.outputs`` order); returns the first ones."""
    per_output = _call(llm, "verdicts_many", [str(o.request_id) for o in outputs]) or [[] for _ in outputs]
    found = []
    for output, verdicts in zip(outputs, per_output, strict=True):
        verdict = verdicts[0] if verdicts else None
        output.axisguard_verdict = verdict
        output.axisguard_verdicts = list(verdicts)
        found.append(verdict)
    return found


def guard_status(llm: Any) -> dict[str, Any] | None:
    """Active requests, errors caught by stage, hooked layers (None when the guard is not attached)."""
    return _call(llm, "status")


def id_matches(query: str, internal_id: str) -> bool:
    """Whether a client's id names this internal request (itself, a sub-request or an ``n > 1`` sample)."""
    return choice_key(query, internal_id) is not None


class VerdictStore:
    """Insertion-ordered, bounded: the oldest verdicts are dropped first (nothing grows without bound)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def put(self, internal_id: str, verdict: dict[str, Any]) -> None:
        self._items[internal_id] = verdict
        self._items.move_to_end(internal_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def matching(self, query: str) -> list[tuple[str, dict[str, Any]]]:
        """``(internal id, verdict)`` of every finished request the client's id covers."""
        exact = self._items.get(query)
        if exact is not None:
            return [(query, exact)]
        return [(k, v) for k, v in self._items.items() if id_matches(query, k)]

    def __len__(self) -> int:
        return len(self._items)
