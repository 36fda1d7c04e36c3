"""Test-only fault injection inside the guard's step, switched on by ``AXISGUARD_TEST_FAULT``.

The reliability suite needs real failures at the one place that must never take a server down (the
scoring step inside the engine), without patching code in a child process it cannot reach. The
switch is an environment variable because vLLM's workers inherit the environment and nothing else:

* ``AXISGUARD_TEST_FAULT=raise:N``: every N-th scored step raises ``InjectedFault`` in the guard;
* ``AXISGUARD_TEST_FAULT=nan:N`` / ``inf:N`` / ``zero:N``: every N-th scored step the guard sees its
  rows as NaN / +inf / all-zero (the guard's copy only; the model's own stream is untouched).

Unset (always, in production) it costs one attribute check per step. It is read once, when the
``Guard`` is built; a malformed value is an ``AxisguardError`` naming the variable.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from guard.errors import AxisguardError

ENV_TEST_FAULT = "AXISGUARD_TEST_FAULT"
KINDS = ("raise", "nan", "inf", "zero")

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """The exception ``raise:N`` injects (a distinct type, so logs and tests can tell it apart)."""


@dataclass(frozen=True)
class FaultInjection:
    kind: str
    every: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FaultInjection | None:
        raw = (os.environ if environ is None else environ).get(ENV_TEST_FAULT, "").strip()
        if not raw:
            return None
        kind, _, every = raw.partition(":")
        try:
            n = int(every or "1")
        except ValueError:
            n = 0
        if kind not in KINDS or n < 1:
            raise AxisguardError(f"{ENV_TEST_FAULT}={raw!r} is not valid",
                                 f"use KIND:N with KIND one of {', '.join(KINDS)} and N >= 1 (test-only; unset it)")
        log.warning("axisguard: %s=%s is set: faults are injected into the guard (test-only switch)",
                    ENV_TEST_FAULT, raw)
        return cls(kind, n)

    def apply(self, step: int, hidden32: torch.Tensor) -> torch.Tensor:
        """The rows the guard scores at ``step`` (1-based): ``hidden32`` or a faulty copy; may raise."""
        if step % self.every:
            return hidden32
        if self.kind == "raise":
            raise InjectedFault(f"injected fault at scored step {step} ({ENV_TEST_FAULT})")
        if self.kind == "zero":
            return torch.zeros_like(hidden32)
        return torch.full_like(hidden32, float("nan") if self.kind == "nan" else float("inf"))
