"""Tensor parallelism: score on TP rank 0 only, steer every rank with the same delta.

After each decoder block vLLM's row-parallel layers all-reduce, so every TP rank holds the full,
identical residual stream. Only rank 0 runs the guard (scores, policy state, verdicts, metrics, so
nothing is counted twice). At each hooked layer rank 0 tells the other ranks whether it steers,
over the host-side (gloo) group so that no device sync is needed in the common "no steering" case,
and only then broadcasts the delta tensor over the device group. Every rank adds the very same
tensor, so the ranks' streams stay identical. Stops need no sync: sampling output is taken from
rank 0, where the guard's stop logits processor runs.

Pipeline parallelism is refused by the plugin (hooked layers would live on different stages).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class StepSync(Protocol):
    is_scoring_rank: bool

    def share_delta(self, delta: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None: ...


class SingleRank:
    """TP size 1: nothing to share."""

    is_scoring_rank = True

    def share_delta(self, delta: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        return delta


class TensorParallelSync:
    """Broadcast rank 0's delta (or its absence) to the other ranks of vLLM's TP group."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.is_scoring_rank = group.rank_in_group == 0

    def share_delta(self, delta: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        flag = self.group.broadcast_object(delta is not None if self.is_scoring_rank else None, src=0)
        if not flag:
            return None
        if self.is_scoring_rank:
            assert delta is not None
            tensor = delta.to(dtype=like.dtype, device=like.device).contiguous()
        else:
            tensor = torch.empty_like(like)
        return self.group.broadcast(tensor, src=0)


def step_sync_for(vllm_config: Any) -> StepSync:
    """The sync strategy for this worker's parallel layout."""
    if vllm_config.parallel_config.tensor_parallel_size <= 1:
        return SingleRank()
    from vllm.distributed import get_tp_group

    return TensorParallelSync(get_tp_group())
