"""Policy swaps in a running worker: new requests get the new policy, running ones keep theirs.

``LivePolicyConsumer`` is the serving step consumer (see ``session.StepConsumer``). It holds one
``GuardConsumer`` per policy generation: the newest takes every request that starts from now on,
an older one keeps guarding the requests it started until they finish and is dropped then (its
metrics flushed). A swap is an RPC (``set_policy``) that vLLM runs between two engine steps, so a
step never sees half a policy. With one generation (the normal case) a step goes straight through;
during a transition each generation gets the rows of its own requests (a gather and a scatter).

A new policy must fit the hooks installed at start-up: steering at a decoder layer that is not
hooked needs a restart, and the swap is refused saying so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from guard.errors import AxisguardError
from guard.policy import Policy, policy_digest
from guard.runtime import Guard
from integrations.vllm.row_mapping import StepRows
from integrations.vllm.session import GuardConsumer


@dataclass
class _Part:
    """One generation's share of a step: its requests' rows (``rows`` into the flat batch)."""

    step: StepRows
    rows: torch.Tensor


def sub_step(step: StepRows, keep: list[int]) -> _Part:
    """The rows of requests ``keep`` (indices into ``step.request_ids``) as a step of their own."""
    counts = step.counts[keep]
    starts = step.query_start_loc[:-1][keep]
    rows = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts, strict=True)]) if keep else \
        np.zeros(0, dtype=np.int64)
    part = StepRows(
        request_ids=[step.request_ids[i] for i in keep],
        query_start_loc=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        num_computed=step.num_computed[keep].copy(), num_prompt=step.num_prompt[keep].copy(),
    )
    return _Part(part, torch.as_tensor(rows, dtype=torch.long))


class LivePolicyConsumer:
    """Guard generations behind the session's consumer interface (see the module docstring)."""

    def __init__(self, guard: Guard, make_guard: Callable[[Policy], Guard], hooked_layers: list[int],
                 metrics: Any = None) -> None:
        self._make_guard = make_guard
        self._metrics = metrics
        self.layers = sorted(set(hooked_layers))
        self.current = GuardConsumer(guard)
        self.generations: list[GuardConsumer] = [self.current]
        self._owner: dict[str, GuardConsumer] = {}
        self._parts: tuple[StepRows, dict[int, _Part]] | None = None
        self._lock = threading.RLock()
        self._publish(None)

    @property
    def guard(self) -> Guard:
        """The guard new requests start under (the newest generation)."""
        return self.current.guard

    @property
    def policy(self) -> Policy:
        return self.current.guard.policy

    def _publish(self, previous: tuple[str, str] | None) -> None:
        if self._metrics is not None:
            self._metrics.set_policy(self.policy.name, policy_digest(self.policy), previous)

    # --- the swap ----------------------------------------------------------------------------------

    def set_policy(self, policy: Policy) -> dict[str, Any]:
        """Make ``policy`` the one new requests start with; raises ``AxisguardError`` (old one stays)."""
        guard = self._make_guard(policy)  # runs the same pack checks as `axisguard policy check`
        missing = sorted(set(guard.layers) - set(self.layers))
        if missing:
            raise AxisguardError(
                f"policy {policy.name!r} steers at decoder layers {missing}, which this server does not hook "
                f"(hooked: {self.layers})", "steer at hooked layers, or restart the server with the new policy",
            )
        with self._lock:
            previous = (self.policy.name, policy_digest(self.policy))
            self.current = GuardConsumer(guard)
            self.generations.append(self.current)
            self._retire()
            self._publish(previous)
        return {"name": policy.name, "hash": policy_digest(policy), "generations": len(self.generations)}

    def _retire(self) -> None:
        for old in [g for g in self.generations if g is not self.current and g.active_requests() == 0]:
            old.guard.flush_metrics()
            self.generations.remove(old)

    # --- StepConsumer --------------------------------------------------------------------------------

    def _of(self, request_id: str) -> GuardConsumer:
        return self._owner.get(request_id, self.current)

    def start_request(self, request_id: str, overrides: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            self._owner[request_id] = self.current
            self.current.start_request(request_id, overrides)

    def on_step(self, layer: int, hidden: torch.Tensor, step: StepRows) -> torch.Tensor | None:
        if len(self.generations) == 1:
            return self.current.on_step(layer, hidden, step)
        parts = self._split(step)
        delta = None
        for index, part in parts.items():
            rows = part.rows.to(hidden.device)
            d = self.generations[index].on_step(layer, hidden.index_select(0, rows), part.step)
            if d is not None:
                delta = torch.zeros_like(hidden) if delta is None else delta
                delta.index_copy_(0, rows, d.to(hidden.dtype))
        return delta

    def _split(self, step: StepRows) -> dict[int, _Part]:
        """Each generation's share of this step (built once per step, reused at every hooked layer)."""
        if self._parts is not None and self._parts[0] is step:
            return self._parts[1]
        by_gen: dict[int, list[int]] = {}
        for i, rid in enumerate(step.request_ids):
            owner = self._of(rid)
            index = next((g for g, c in enumerate(self.generations) if c is owner), len(self.generations) - 1)
            by_gen.setdefault(index, []).append(i)
        parts = {g: sub_step(step, keep) for g, keep in by_gen.items()}
        self._parts = (step, parts)
        return parts

    def should_stop(self, request_id: str) -> bool:
        return self._of(request_id).should_stop(request_id)

    def finish_request(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            owner = self._owner.pop(request_id, self.current)
            verdict = owner.finish_request(request_id)
            if owner is not self.current:
                self._retire()
            return verdict

    def verdict(self, request_id: str) -> dict[str, Any] | None:
        return self._of(request_id).verdict(request_id)

    def report_error(self, stage: str, exc: BaseException, request_ids: list[str]) -> None:
        self.current.report_error(stage, exc, request_ids)

    def active_requests(self) -> int:
        return sum(g.active_requests() for g in self.generations)
