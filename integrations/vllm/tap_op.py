"""The guard's compile-safe tap: one ``torch.library`` custom op after each guarded decoder layer.

``axisguard::tap(Tensor(a!) hidden, Tensor? residual, int layer) -> ()`` is called right after
decoder block ``layer`` returns ``(hidden, residual)``. torch.compile (Dynamo + inductor, vLLM's
default) keeps it as one opaque node with a declared mutation of ``hidden``, so the compiled model
still calls the guard at every step; in eager mode (``enforce_eager``) the very same op runs. One
code path serves guarding, steering and activation capture (``--engine vllm`` extraction).

The op's eager implementation calls the Python callback of the *current step*, set by the guard
session around the model forward (``tap_context``). vLLM's own dummy, profiling and warm-up
forwards run without a step context (or with no real rows) and pass through untouched; so does a
forward of a model whose session was closed.

The layer is wrapped (an instance ``forward`` that calls the original, then the op) right after
``load_model``, before vLLM's first forward, which is when vLLM compiles. A model that was compiled
already is refused: its graph would not contain the tap.

**Compile cache.** vLLM keeps compiled graphs on disk (AOT compile cache) keyed by a hash of its
config. A graph compiled without the tap (vanilla engine), or with taps on other layers, must never
be served to this engine and vice versa, so ``install_taps`` records the tapped layers and the op's
version in ``vllm_config.additional_config`` (part of that hash) before the first compile.

**CUDA graphs** (design (a)): the op is registered in ``compilation_config.splitting_ops`` so it runs
eagerly between vLLM's piecewise CUDA graphs; FULL cudagraph modes would replay a captured forward
that skips it, so they are switched to PIECEWISE with a logged reason (``engine_graph_settings``).
On CPU vLLM compiles one whole graph with inductor and has no CUDA graphs; the op is an opaque node.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from guard.errors import AxisguardError
from integrations.decoder_layers import decoder_layers
from integrations.vllm.hooks import LayerCallback

log = logging.getLogger(__name__)

OP_NAME = "axisguard::tap"
# Bump when the op's schema or the wrapped forward changes: it is part of vLLM's compile-cache key.
TAP_VERSION = 1
CACHE_KEY = "axisguard_tap"

_current = threading.local()


@torch.library.custom_op(OP_NAME, mutates_args=("hidden",))
def tap(hidden: torch.Tensor, residual: torch.Tensor | None, layer: int) -> None:
    """Hand the layer's output to the current step's callback (no-op outside a guarded step)."""
    callback = getattr(_current, "callback", None)
    if callback is not None:
        callback(layer, (hidden, residual) if residual is not None else hidden)


@tap.register_fake
def _tap_fake(hidden: torch.Tensor, residual: torch.Tensor | None, layer: int) -> None:
    return None


@contextlib.contextmanager
def tap_context(callback: LayerCallback) -> Iterator[None]:
    """Route the taps of forwards run by this thread to ``callback`` (the guard session's step)."""
    previous = getattr(_current, "callback", None)
    _current.callback = callback
    try:
        yield
    finally:
        _current.callback = previous


class TapHandle:
    """Undoes one layer's wrapping (``remove()``), like a hook handle."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block

    def remove(self) -> None:
        self.block.__dict__.pop("forward", None)


def _tapped_forward(block: nn.Module, layer: int) -> Callable[..., Any]:
    inner = block.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        output = inner(*args, **kwargs)
        if isinstance(output, torch.Tensor):
            torch.ops.axisguard.tap(output, None, layer)
        else:
            residual = output[1] if len(output) > 1 and isinstance(output[1], torch.Tensor) else None
            torch.ops.axisguard.tap(output[0], residual, layer)
        return output

    return forward


def _already_compiled(model: nn.Module) -> bool:
    return any(getattr(module, "compiled", False) is True or getattr(module, "aot_compiled_fn", None) is not None
               for module in model.modules())


def install_taps(model: nn.Module, layers: Sequence[int], vllm_config: Any = None) -> list[TapHandle]:
    """Wrap each requested decoder layer with the tap; record the tap in vLLM's compile-cache key."""
    blocks = decoder_layers(model)
    bad = [layer for layer in layers if not 0 <= layer < len(blocks)]
    if bad:
        raise AxisguardError(
            f"layer {bad[0]} is out of range for this model ({len(blocks)} decoder layers)",
            "the pack or policy was built for a different model; rebuild it with `axisguard adapt`",
        )
    if _already_compiled(model):
        raise AxisguardError("axisguard's tap must be installed before vLLM compiles the model, but it is compiled",
                             "this is a bug in the plugin's attach order; pass --enforce-eager as a workaround")
    wanted = sorted(set(layers))
    if vllm_config is not None:
        record_in_cache_key(vllm_config, wanted)
    handles = []
    for layer in wanted:
        block = blocks[layer]
        block.forward = _tapped_forward(block, layer)
        handles.append(TapHandle(block))
    return handles


def record_in_cache_key(vllm_config: Any, layers: Sequence[int]) -> None:
    """Make vLLM's compile-cache hash depend on the taps (``additional_config`` is hashed)."""
    extra = vllm_config.additional_config
    if not isinstance(extra, dict):  # a platform's typed config: leave it, and keep compiled graphs private
        log.warning("axisguard: additional_config is not a dict; disabling vLLM's compile cache for this engine "
                    "so a graph compiled without the guard's tap cannot be loaded")
        import os

        os.environ["VLLM_DISABLE_COMPILE_CACHE"] = "1"
        return
    extra[CACHE_KEY] = {"version": TAP_VERSION, "layers": list(layers)}


def adapt_graph_settings(vllm_config: Any) -> None:
    """Design (a) for CUDA graphs: the tap runs between piecewise graphs, never inside a captured one.

    Only acts when vLLM compiles piecewise (``VLLM_COMPILE`` with splitting ops, the GPU default);
    eager engines and CPU (one inductor graph, no CUDA graphs) are left as they are.
    """
    from vllm.config import CompilationMode, CUDAGraphMode

    compilation = vllm_config.compilation_config
    if vllm_config.model_config.enforce_eager or compilation.mode != CompilationMode.VLLM_COMPILE:
        return
    ops = compilation.splitting_ops
    if ops is not None and OP_NAME not in ops:
        ops.append(OP_NAME)
    mode = compilation.cudagraph_mode
    if mode is not None and mode.has_full_cudagraphs():
        log.warning("axisguard: cudagraph_mode %s -> PIECEWISE: a full CUDA graph replays the whole forward "
                    "without calling the guard's tap; piecewise graphs run it between them", mode)
        compilation.cudagraph_mode = CUDAGraphMode.PIECEWISE
