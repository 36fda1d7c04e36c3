"""Tensor parallelism: rank 0 scores and decides, every rank adds the very same delta.

This machine has no GPUs, so the protocol runs over real gloo collectives between two processes,
with a group object offering the two calls the sync uses from vLLM's ``GroupCoordinator``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.vllm


class GlooGroup:
    """``broadcast_object`` / ``broadcast`` with GroupCoordinator's semantics, on the default gloo group."""

    def __init__(self, rank: int) -> None:
        self.rank_in_group = rank

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        dist.broadcast(tensor, src=src)
        return tensor


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    from integrations.vllm.tensor_parallel import TensorParallelSync

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        sync = TensorParallelSync(GlooGroup(rank))
        stream = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))  # identical on both ranks
        results = []
        # Step 1: rank 0 has nothing to steer. Step 2: rank 0 steers two rows; what rank 1 computed
        # locally (garbage here) must be ignored.
        for step in range(2):
            local = None
            if rank == 0 and step == 1:
                local = torch.zeros_like(stream)
                local[1:3] = 0.5
            elif rank == 1:
                local = torch.full_like(stream, 99.0)
            results.append(sync.share_delta(local, stream))
        torch.save({"scoring": sync.is_scoring_rank, "results": results}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_delta_is_decided_on_rank0_and_identical_everywhere(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank_main, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["scoring"] and not rank1["scoring"]
    assert rank0["results"][0] is None and rank1["results"][0] is None  # rank 1's own delta is ignored
    expected = torch.zeros(5, 8)
    expected[1:3] = 0.5
    torch.testing.assert_close(rank0["results"][1], expected)
    torch.testing.assert_close(rank1["results"][1], expected)


def test_single_rank_passes_the_delta_through() -> None:
    from integrations.vllm.tensor_parallel import SingleRank

    delta = torch.ones(2, 3)
    assert SingleRank().share_delta(delta, torch.zeros(2, 3)) is delta
    assert SingleRank().share_delta(None, torch.zeros(2, 3)) is None
