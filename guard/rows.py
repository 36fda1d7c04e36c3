"""The row contract between an engine adapter and the guard: which request owns each row of a step.

An adapter describes every forward step as a ``RowMap`` (host tensors); ``index_rows`` derives the
step's device-side indices (``StepIndex``) from it once, and the guard reuses them at every hooked layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class RowMap:
    """How one forward step's flat token rows map to requests.

    ``row_request[i]`` indexes ``request_ids`` for token row ``i`` (``-1``: a padding row, neither
    scored nor steered). ``is_prompt[i]``: the row is a prompt (prefill) token, not a generated one.
    ``prompt_complete[r]`` (optional, default: "has prompt rows in this step"): this step holds the
    last prompt token of request ``r`` (False for a non-final chunk of a chunked prefill). Rows of one
    request must be contiguous and in position order. Adapters should pass the same ``RowMap``
    object to every layer of a step (per-step indices are derived once and cached on it).
    """

    request_ids: list[str]
    row_request: torch.Tensor
    is_prompt: torch.Tensor
    prompt_complete: torch.Tensor | None = None

    @classmethod
    def from_query_start_loc(
        cls,
        request_ids: Sequence[str],
        query_start_loc: torch.Tensor | np.ndarray | Sequence[int],
        num_prompt_tokens: torch.Tensor | np.ndarray | Sequence[int],
        num_computed_tokens: torch.Tensor | np.ndarray | Sequence[int],
    ) -> RowMap:
        """Rows of a flat (vLLM-style) batch: request ``r`` owns rows ``qsl[r]:qsl[r+1]``, which hold
        positions ``num_computed[r] ...``; positions below ``num_prompt[r]`` are prompt tokens.
        All inputs are host (CPU) values for the ``len(request_ids)`` requests of the step."""
        n = len(request_ids)
        qsl = torch.as_tensor(query_start_loc, dtype=torch.long).cpu()[: n + 1]
        prompt = torch.as_tensor(num_prompt_tokens, dtype=torch.long).cpu()[:n]
        computed = torch.as_tensor(num_computed_tokens, dtype=torch.long).cpu()[:n]
        counts = qsl[1:] - qsl[:-1]
        row_request = torch.repeat_interleave(torch.arange(n), counts)
        offset_in_request = torch.arange(int(qsl[-1]) - int(qsl[0])) - (qsl[:-1] - qsl[0])[row_request]
        position = computed[row_request] + offset_in_request
        is_prompt = position < prompt[row_request]
        complete = (computed < prompt) & (computed + counts >= prompt)
        return cls(list(request_ids), row_request, is_prompt, complete)

    @classmethod
    def padded(cls, request_ids: Sequence[str], valid: torch.Tensor, is_prompt: bool) -> RowMap:
        """Rows of a padded ``[B, t]`` batch flattened to ``B*t`` (HF): row ``(b, j)`` belongs to request
        ``b`` where ``valid[b, j]`` (attention mask of this step's columns), else it is padding."""
        valid = valid.bool().cpu()
        batch, width = valid.shape
        owner = torch.arange(batch).unsqueeze(1).expand(batch, width)
        row_request = torch.where(valid, owner, torch.full_like(owner, -1)).reshape(-1)
        return cls(
            list(request_ids), row_request, torch.full((batch * width,), is_prompt),
            torch.full((batch,), is_prompt),
        )


@dataclass
class StepIndex:
    """Per-step indices derived from a ``RowMap`` on the model's device (cached per RowMap)."""

    num_requests: int
    num_rows: int
    req_slot: torch.Tensor  # [R] slot of each request
    row_index: torch.Tensor  # [T] request index, R for padding rows
    row_slot: torch.Tensor  # [T] slot of each row, the trash slot for padding rows
    valid: torch.Tensor  # [T] bool
    prompt_rows: torch.Tensor  # [T] bool
    gen: torch.Tensor  # [T] bool
    rank: torch.Tensor  # [T] rank of a generated row among its request's generated rows in this step
    n_gen: torch.Tensor  # [R+1]
    n_prompt: torch.Tensor  # [R]
    last_prompt_row: torch.Tensor  # [R] (-1: none)
    last_gen_row: torch.Tensor  # [R] (-1: none)
    prompt_done_now: torch.Tensor  # [R] bool
    steerable: torch.Tensor  # [T] bool: generated rows and the last prompt row of a completed prompt


def index_rows(rows: RowMap, slots: Sequence[int], num_rows: int, trash: int, dev: torch.device) -> StepIndex:
    """The step's row/request indices on ``dev`` (device ops only): ``slots`` [R] are the requests'
    monitor slots, padding rows go to the ``trash`` slot."""
    n_req = len(rows.request_ids)
    row_request = rows.row_request.to(dev, non_blocking=True).long()
    is_prompt = rows.is_prompt.to(dev, non_blocking=True).bool()
    if row_request.shape[0] < num_rows:  # engine padding rows past the scheduled tokens
        pad = num_rows - row_request.shape[0]
        row_request = torch.cat([row_request, row_request.new_full((pad,), -1)])
        is_prompt = torch.cat([is_prompt, is_prompt.new_zeros(pad)])
    elif row_request.shape[0] > num_rows:
        raise ValueError(f"RowMap has {row_request.shape[0]} rows but the hidden states have {num_rows}")
    valid = row_request >= 0
    row_index = torch.where(valid, row_request, n_req)
    req_slot = torch.tensor(list(slots), dtype=torch.long).to(dev, non_blocking=True)
    slot_ext = torch.cat([req_slot, req_slot.new_full((1,), trash)])
    row_slot = slot_ext[row_index]
    prompt_rows = valid & is_prompt
    gen = valid & ~is_prompt
    arange = torch.arange(num_rows, device=dev)
    minus_one = torch.full((n_req + 1,), -1, dtype=torch.long, device=dev)
    last_prompt = minus_one.scatter_reduce(0, row_index, torch.where(prompt_rows, arange, -1), "amax")
    last_gen = minus_one.scatter_reduce(0, row_index, torch.where(gen, arange, -1), "amax")
    zeros = torch.zeros(n_req + 1, dtype=torch.long, device=dev)
    n_gen = zeros.index_add(0, row_index, gen.long())
    n_prompt = zeros.index_add(0, row_index, prompt_rows.long())[:n_req]
    gen_before = torch.cumsum(gen.long(), 0) - gen.long()  # generated rows before each row
    first = torch.full((n_req + 1,), num_rows, dtype=torch.long, device=dev)
    first = first.scatter_reduce(0, row_index, torch.where(gen, gen_before, num_rows), "amin")
    rank = gen_before - first[row_index]
    if rows.prompt_complete is not None:
        complete = rows.prompt_complete.to(dev, non_blocking=True).bool()[:n_req]
        prompt_done_now = complete & (n_prompt > 0)
    else:
        prompt_done_now = n_prompt > 0
    done_ext = torch.cat([prompt_done_now, prompt_done_now.new_zeros(1)])
    steerable = gen | (prompt_rows & (arange == last_prompt[row_index]) & done_ext[row_index])
    return StepIndex(
        num_requests=n_req, num_rows=num_rows, req_slot=req_slot, row_index=row_index, row_slot=row_slot,
        valid=valid, prompt_rows=prompt_rows, gen=gen, rank=rank, n_gen=n_gen, n_prompt=n_prompt,
        last_prompt_row=last_prompt[:n_req], last_gen_row=last_gen[:n_req],
        prompt_done_now=prompt_done_now, steerable=steerable,
    )
