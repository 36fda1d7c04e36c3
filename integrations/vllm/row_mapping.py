"""Which request each row of vLLM's flat token batch belongs to, rebuilt every forward step.

vLLM runs all scheduled requests as one flat ``[T, d]`` batch: request ``i`` of
``input_batch.req_ids[:num_reqs]`` owns rows ``query_start_loc[i]:query_start_loc[i+1]``, and its
first row sits at position ``num_computed_tokens[i]`` of its sequence. The order of requests
changes between steps (arrivals, finishes, reordering of decodes before prefills), so the map is
read from the model runner right before each forward, never cached across steps.

A row is a prompt row when its position is below the request's prompt length; that holds for
chunked prefill (a prompt split over several steps) and for mixed prefill/decode batches alike.
Rows past ``query_start_loc[num_reqs]`` are padding and belong to no request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from guard.rows import RowMap


@dataclass
class StepRows:
    """The row layout of one forward step (host-side numpy; cheap, built once per step)."""

    request_ids: list[str]
    query_start_loc: np.ndarray  # [R + 1] int
    num_computed: np.ndarray  # [R] tokens of each request already in the KV cache before this step
    num_prompt: np.ndarray  # [R] prompt length of each request
    _row_map: RowMap | None = field(default=None, repr=False)

    @property
    def num_tokens(self) -> int:
        """Real (unpadded) rows in this step."""
        return int(self.query_start_loc[-1]) if len(self.query_start_loc) else 0

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.query_start_loc)

    def row_request(self) -> np.ndarray:
        """[T] index into ``request_ids`` for every real row."""
        return np.repeat(np.arange(len(self.request_ids)), self.counts)

    def positions(self) -> np.ndarray:
        """[T] position of every real row inside its own sequence."""
        owner = self.row_request()
        offset = np.arange(self.num_tokens) - self.query_start_loc[:-1][owner]
        return self.num_computed[owner] + offset

    def is_prompt(self) -> np.ndarray:
        """[T] True for rows that read prompt tokens, False for rows that read generated tokens."""
        return self.positions() < self.num_prompt[self.row_request()]

    def prompt_complete(self) -> np.ndarray:
        """[R] True for requests whose last prompt token is read in this step."""
        end = self.num_computed + self.counts
        return (self.num_computed < self.num_prompt) & (end >= self.num_prompt)

    def row_map(self) -> RowMap:
        """The runtime facade's ``RowMap`` for this step: built once, the same object for every layer
        (the guard caches its per-step device indices on it)."""
        if self._row_map is None:
            self._row_map = RowMap.from_query_start_loc(
                self.request_ids, self.query_start_loc, self.num_prompt, self.num_computed
            )
        return self._row_map


def step_rows_from_runner(runner: Any) -> StepRows:
    """Read the current step's layout from a vLLM V1 ``GPUModelRunner`` (also the CPU runner)."""
    batch = runner.input_batch
    num_reqs = int(batch.num_reqs)
    return StepRows(
        request_ids=list(batch.req_ids[:num_reqs]),
        query_start_loc=np.asarray(runner.query_start_loc.np[: num_reqs + 1], dtype=np.int64).copy(),
        num_computed=np.asarray(batch.num_computed_tokens_cpu[:num_reqs], dtype=np.int64).copy(),
        num_prompt=np.asarray(batch.num_prompt_tokens[:num_reqs], dtype=np.int64).copy(),
    )
