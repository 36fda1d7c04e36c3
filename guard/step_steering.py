"""The steer rules' deltas for one layer of one step: which rules steer at which layer, and how.

Built once per guard (and again when the guard moves to the model's device): one ``SteerOp`` per
steer rule, with the rule's direction, strength and, for ``clamp``, the target cosine that its target
z-score means on this model. ``delta`` sums the deltas of the rules active on each row.
"""

from __future__ import annotations

import torch

from guard.monitor import Monitor
from guard.policy_check import ResolvedRule
from guard.steering import SteerOp, z_to_cosine


class StepSteering:
    def __init__(self, rules: list[ResolvedRule], monitor: Monitor) -> None:
        self.rules = [r for r in rules if r.steer_axis_index is not None]
        self.monitor = monitor
        self.by_layer: dict[int, list[int]] = {}
        for r in self.rules:
            for layer in r.steer_layers:
                self.by_layer.setdefault(layer, []).append(r.index)
        self._first_layer = {r.index: min(r.steer_layers) for r in self.rules}
        self._ops: dict[int, SteerOp] = {}
        self.build(torch.device("cpu"))

    def build(self, device: torch.device) -> None:
        m = self.monitor
        for r in self.rules:
            steer = r.rule.steer
            k = r.steer_axis_index
            assert steer is not None and k is not None  # self.rules holds steer rules only
            target = None
            if steer.method == "clamp" and r.clamp_target_z is not None:
                target = float(z_to_cosine(r.clamp_target_z, m.offset[k].item(), m.scale[k].item()))
            self._ops[r.index] = SteerOp(
                method=steer.method, direction=m.vectors[k].to(device), strength=steer.strength,
                relative=steer.relative, mean=m.axis_anchor_mean[k].to(device), target_cos=target, side=steer.side,
            )

    def delta(self, layer: int, h: torch.Tensor, active: torch.Tensor, strength: torch.Tensor) -> torch.Tensor | None:
        """Sum of the deltas [T, d] of the rules steering at ``layer``, each on its ``active`` [T, n] rows
        (``strength`` [T, n]: per row and rule); counts steered rows at each rule's first layer."""
        delta = None
        for r in self.by_layer.get(layer, ()):
            mask = active[:, r]
            d = torch.where(mask.unsqueeze(1), self._ops[r].delta(h, strength[:, r]), 0.0)
            delta = d if delta is None else delta + d
            if layer == self._first_layer[r]:
                self.monitor.metrics.count_steered(r, mask)
        return delta
