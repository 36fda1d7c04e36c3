"""The monitor's per-request state: one row per *slot* in a set of typed tensors, and what leaves it.

``slot_spec`` lists every per-slot field (shape, dtype, reset value); ``SlotState`` holds them on the
device, ``SlotSnapshot`` is one slot read back to the host (for a verdict), ``FiredEvent`` one rule
that fired. Rule kinds and actions are stored as integer codes so a whole step is judged with
tensor ops (``guard.monitor``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import torch

from guard.policy import ACTIONS


class ScoreKind(IntEnum):
    """What a rule watches (see ``guard.policy``); stored per rule as a device tensor of these codes."""

    PROMPT = 0
    GENERATION = 1
    TOKEN = 2


KIND_CODES = {"prompt": ScoreKind.PROMPT, "generation": ScoreKind.GENERATION, "token": ScoreKind.TOKEN}
ACTION_CODES = {name: i for i, name in enumerate(ACTIONS)}
STEER = ACTION_CODES["steer"]
FOREVER = 1 << 62


class SlotState:
    """Every per-request tensor, one row per slot plus the trash slot (shapes in ``slot_spec``).

    K axes, n rules: scores ``prompt_z``/``last_z``/``ema``/``max_z`` [K]; counters ``prompt_tokens``,
    ``gen_count``, ``over_axis`` [K], ``rule_over`` [n]; rule outcomes ``fired``/``reported``/
    ``fired_value``/``fired_token`` [n]; steering ``steer_on``/``steer_left`` [n]; the request's rule
    settings after overrides ``threshold``/``min_tokens``/``enabled``/``action``/``strength`` [n];
    optional ``hist`` [n, window] (token-rule window bits) and ``traj`` [trajectory_tokens, K].
    """

    prompt_z: torch.Tensor
    prompt_tokens: torch.Tensor
    gen_count: torch.Tensor
    last_z: torch.Tensor
    ema: torch.Tensor
    max_z: torch.Tensor
    over_axis: torch.Tensor
    rule_over: torch.Tensor
    fired: torch.Tensor
    reported: torch.Tensor
    fired_value: torch.Tensor
    fired_token: torch.Tensor
    steer_on: torch.Tensor
    steer_left: torch.Tensor
    threshold: torch.Tensor
    min_tokens: torch.Tensor
    enabled: torch.Tensor
    action: torch.Tensor
    strength: torch.Tensor
    shadow: torch.Tensor
    hist: torch.Tensor
    traj: torch.Tensor

    def items(self) -> list[tuple[str, torch.Tensor]]:
        return list(vars(self).items())

    def move_to(self, device: torch.device) -> None:
        for name, tensor in self.items():
            setattr(self, name, tensor.to(device))


@dataclass
class SlotSnapshot:
    """One slot's ``SlotState`` on the host, as Python lists/numbers (``hist``/``traj`` when kept)."""

    prompt_z: list[float]
    prompt_tokens: int
    gen_count: int
    last_z: list[float]
    ema: list[float]
    max_z: list[float]
    over_axis: list[int]
    rule_over: list[int]
    fired: list[bool]
    reported: list[bool]
    fired_value: list[float]
    fired_token: list[int]
    steer_on: list[bool]
    steer_left: list[int]
    threshold: list[float]
    min_tokens: list[int]
    enabled: list[bool]
    action: list[int]
    strength: list[float]
    shadow: bool = False
    hist: list[list[bool]] | None = None
    traj: list[list[float]] | None = None


def slot_spec(k: int, n: int, window: int, trajectory_tokens: int) -> dict[str, tuple[tuple[int, ...], torch.dtype, Any]]:
    """Every ``SlotState`` field for K axes and n rules: name -> (per-slot shape, dtype, reset value or
    the name of a per-rule default, filled from the policy)."""
    f32, nan, inf = torch.float32, float("nan"), float("-inf")
    spec: dict[str, tuple[tuple[int, ...], torch.dtype, Any]] = {
        "prompt_z": ((k,), f32, nan),
        "prompt_tokens": ((), torch.long, 0),
        "gen_count": ((), torch.long, 0),
        "last_z": ((k,), f32, nan),
        "ema": ((k,), f32, nan),
        "max_z": ((k,), f32, inf),
        "over_axis": ((k,), torch.long, 0),
        "rule_over": ((n,), torch.long, 0),
        "fired": ((n,), torch.bool, False),
        "reported": ((n,), torch.bool, False),
        "fired_value": ((n,), f32, nan),
        "fired_token": ((n,), torch.long, -1),
        "steer_on": ((n,), torch.bool, False),
        "steer_left": ((n,), torch.long, 0),
        "threshold": ((n,), f32, "threshold"),
        "min_tokens": ((n,), torch.long, "min_tokens"),
        "enabled": ((n,), torch.bool, "enabled"),
        "action": ((n,), torch.long, "action"),
        "strength": ((n,), f32, "strength"),
        # shadow mode: rules are judged and recorded, steering never switches on (stop: see Guard)
        "shadow": ((), torch.bool, False),
    }
    if window:
        spec["hist"] = ((n, window), torch.bool, False)
    if trajectory_tokens:
        spec["traj"] = ((trajectory_tokens, k), f32, nan)
    return spec


@dataclass(frozen=True)
class FiredEvent:
    """A rule that fired for the request in ``slot`` (reported to the host once)."""

    slot: int
    rule_index: int
    action: str
