"""vLLM decoder layers' output: read the residual stream after a block, add a steering delta.

Layer convention (the same as everywhere in axisguard): "layer L" is the residual stream after
decoder block L, i.e. what a forward hook on ``model.model.layers[L]`` sees. vLLM's decoder layers
return ``(hidden, residual)`` with the residual add fused into the next layer's norm, so the stream
is ``hidden + residual``; a steering delta is added to ``hidden`` (the next fused add then carries it
into the stream, and the final norm too for the last layer).

The layer output reaches the guard through the compile-safe tap op (``tap_op``), in eager and
compiled mode alike (Python forward hooks would be skipped by a compiled forward).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# callback(layer, module_output) -> None; it may add a delta in place with ``add_to_stream``.
LayerCallback = Callable[[int, Any], None]

def residual_stream(output: Any) -> torch.Tensor:
    """The residual stream a decoder layer produced: ``hidden + residual`` for vLLM's fused layers."""
    if isinstance(output, torch.Tensor):
        return output
    hidden, residual = output[0], output[1] if len(output) > 1 else None
    if isinstance(residual, torch.Tensor) and residual.shape == hidden.shape:
        return hidden + residual
    return hidden


def add_to_stream(output: Any, delta: torch.Tensor) -> None:
    """Add ``delta`` [T, d] to the first T rows of the layer's stream, in place (rows past T are padding)."""
    hidden = output if isinstance(output, torch.Tensor) else output[0]
    rows = delta.shape[0]
    hidden[:rows].add_(delta.to(dtype=hidden.dtype, device=hidden.device))
