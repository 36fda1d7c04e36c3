"""Prometheus metrics accumulated on the device, step by step, and read back in bulk at a flush.

The hot path never syncs with the host for metrics: each step adds its z-scores to a histogram
(bucket counts per axis), their sums and squares, token counts and steered rows, all as device
tensors; ``take_totals`` reads them back once per flush (``Guard.flush_metrics``) and resets them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from guard.rows import StepIndex


@dataclass
class Accumulators:
    """Device-side metric sums since the last flush: z histogram ``buckets`` [K, B], ``sum`` [K],
    ``sq`` (sum of squares, all axes), ``tokens`` [prompt, generation], ``steered`` [n]."""

    buckets: torch.Tensor
    sum: torch.Tensor
    sq: torch.Tensor
    tokens: torch.Tensor
    steered: torch.Tensor

    def move_to(self, device: torch.device) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name).to(device))


@dataclass
class MetricTotals:
    """``Accumulators`` read back to the host for one Prometheus flush."""

    buckets: list[list[float]]
    sums: list[float]
    squares: float
    prompt_tokens: int
    generated_tokens: int
    steered: list[int]


class StepMetrics:
    """The device-side accumulators for K axes and n rules; off until ``set_buckets``."""

    def __init__(self, num_axes: int, num_rules: int) -> None:
        self.num_axes, self.num_rules = num_axes, num_rules
        self.device = torch.device("cpu")
        self.z_bounds = torch.tensor([], dtype=torch.float32)  # finite histogram bounds, set by set_buckets
        self.enabled = False  # accumulate only when a metrics registry exists
        self.reset()

    def to(self, device: torch.device) -> None:
        self.device = device
        self.z_bounds = self.z_bounds.to(device)
        self.acc.move_to(device)

    def set_buckets(self, bounds: Sequence[float]) -> None:
        """Turn metric accumulation on, with these histogram bucket bounds."""
        self.z_bounds = torch.tensor([b for b in bounds if np.isfinite(b)], dtype=torch.float32, device=self.device)
        self.enabled = True
        self.reset()

    def reset(self) -> None:
        k, n, dev = self.num_axes, self.num_rules, self.device
        buckets = self.z_bounds.numel() + 1
        self.acc = Accumulators(
            buckets=torch.zeros(k, buckets, device=dev),
            sum=torch.zeros(k, device=dev),
            sq=torch.zeros((), device=dev),
            tokens=torch.zeros(2, dtype=torch.long, device=dev),  # prompt, generation
            steered=torch.zeros(n, dtype=torch.long, device=dev),
        )

    def accumulate(self, z: torch.Tensor, ix: StepIndex) -> None:
        """Add one step's z-scores [T, K] (padding rows excluded)."""
        acc = self.acc
        valid = ix.valid.unsqueeze(1).to(z.dtype)
        clean = torch.nan_to_num(z, nan=0.0, posinf=1e6, neginf=-1e6) * valid
        k, buckets = acc.buckets.shape
        bucket = torch.bucketize(clean, self.z_bounds)
        flat = (bucket + torch.arange(k, device=z.device) * buckets).reshape(-1)
        acc.buckets.view(-1).index_add_(0, flat, valid.expand_as(z).reshape(-1))
        acc.sum += clean.sum(0)
        acc.sq += clean.pow(2).sum()
        acc.tokens += torch.stack([ix.prompt_rows.sum(), ix.gen.sum()])

    def count_steered(self, rule_index: int, mask: torch.Tensor) -> None:
        if self.enabled:
            self.acc.steered[rule_index] += mask.sum()

    def take_totals(self) -> MetricTotals:
        """The metric accumulators on the host (one device sync), then reset."""
        acc = self.acc
        totals = MetricTotals(buckets=acc.buckets.tolist(), sums=acc.sum.tolist(), squares=float(acc.sq),
                              prompt_tokens=int(acc.tokens[0]), generated_tokens=int(acc.tokens[1]),
                              steered=acc.steered.tolist())
        self.reset()
        return totals
