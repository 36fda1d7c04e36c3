"""Activation capture through vLLM's hooks: pooled prompt activations per request and layer.

This is the step consumer behind ``--engine vllm`` extraction (``integrations.vllm.extraction``): it
sees exactly the rows the guard sees (same hooks, same row map), and pools each request's prompt
rows the way the transformers path does: ``last`` = the last prompt token's residual stream,
``mean`` = the mean over prompt tokens. Prompts split over several steps by chunked prefill are
accumulated across steps. Generated-token rows are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from integrations.vllm.row_mapping import StepRows


class CaptureConsumer:
    """Records pooled prompt activations; never steers, never stops."""

    def __init__(self, layers: Sequence[int], pooling: str = "last") -> None:
        self.layers = sorted(set(layers))
        self.pooling = pooling
        self._sums: dict[tuple[str, int], torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._done: dict[str, dict[int, np.ndarray]] = {}

    # --- step consumer protocol (see integrations.vllm.session) ---------------------------------------

    def start_request(self, request_id: str, overrides: Mapping[str, Any] | None = None) -> None:
        pass

    def on_step(self, layer: int, hidden: torch.Tensor, step: StepRows) -> torch.Tensor | None:
        positions = step.positions()
        owner = step.row_request()
        prompt_len = step.num_prompt[owner]
        prompt_rows = positions < prompt_len
        if not prompt_rows.any():
            return None
        is_last = positions == prompt_len - 1
        rows = np.flatnonzero(is_last if self.pooling == "last" else prompt_rows)
        if len(rows) == 0:
            return None
        # Sum the selected rows per request in one scatter, then loop over requests (not tokens).
        requests, inverse = np.unique(owner[rows], return_inverse=True)
        picked = hidden[torch.from_numpy(rows).to(hidden.device)].float()
        sums = torch.zeros(len(requests), picked.shape[1], device=picked.device)
        sums.index_add_(0, torch.from_numpy(inverse).to(picked.device), picked)
        counts = np.bincount(inverse, minlength=len(requests))
        completes = np.zeros(len(requests), dtype=bool)
        np.logical_or.at(completes, inverse, is_last[rows])
        for j, req in enumerate(requests.tolist()):
            rid = step.request_ids[req]
            key = (rid, layer)
            self._sums[key] = self._sums[key] + sums[j] if key in self._sums else sums[j]
            if layer == self.layers[0]:
                self._counts[rid] = self._counts.get(rid, 0) + int(counts[j])
            if completes[j] and layer == self.layers[-1]:
                self._complete(rid)
        return None

    def should_stop(self, request_id: str) -> bool:
        return False

    def finish_request(self, request_id: str) -> dict[str, Any] | None:
        return None

    def verdict(self, request_id: str) -> dict[str, Any] | None:
        return None

    def active_requests(self) -> int:
        return len(self._counts)

    # --- results ----------------------------------------------------------------------------------------

    def _complete(self, rid: str) -> None:
        count = max(self._counts.pop(rid, 1), 1)
        out = {}
        for layer in self.layers:
            total = self._sums.pop((rid, layer))
            out[layer] = (total / count if self.pooling == "mean" else total).cpu().numpy()
        self._done[rid] = out

    def take(self) -> dict[str, dict[int, np.ndarray]]:
        """Pooled activations of every request whose prompt has been read since the last call."""
        done, self._done = self._done, {}
        return done
