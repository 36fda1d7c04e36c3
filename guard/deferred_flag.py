"""The one bit the host needs from the device each step ("did any rule fire?"), read without waiting.

On CPU the guard reads it at once (free). On accelerators waiting for it would stall the step, so the
flag is copied asynchronously into (pinned) host memory after the step and read on a later call once
the copy has landed (a CUDA event says when); until then ``pending`` tells the guard that a firing may
be unknown to the host, so it must not skip steering work.
"""

from __future__ import annotations

from typing import Any

import torch


class DeferredFlag:
    def __init__(self) -> None:
        self._host = torch.zeros(1, dtype=torch.bool)
        self._event: Any = None
        self.pending = False

    def use_device(self, device: torch.device) -> None:
        """Page-locked host memory on CUDA, so the copy can run asynchronously."""
        if device.type == "cuda":
            self._host = torch.zeros(1, dtype=torch.bool).pin_memory()

    def post(self, flag: torch.Tensor) -> None:
        """Start copying the device's flag (a bool tensor of one element) to the host."""
        self._host.copy_(flag.reshape(1), non_blocking=True)
        if flag.device.type == "cuda":
            self._event = torch.cuda.Event()
            self._event.record()
        self.pending = True

    def take(self) -> bool:
        """True once a posted flag has arrived and was set (then cleared); False while none is pending
        or the copy is still in flight."""
        if not self.pending:
            return False
        if self._event is not None and not self._event.query():
            return False
        self.pending = False
        return bool(self._host[0])
