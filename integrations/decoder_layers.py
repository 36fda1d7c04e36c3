"""Where a decoder-only model keeps its blocks: shared by the transformers and vLLM integrations.

"Layer L" everywhere in axisguard is the output of block L of this list, so both engines must find
the same list.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from guard.errors import AxisguardError

# GPT-2 style `transformer.h` is deliberately absent: its blocks do not return the (hidden, residual)
# layout the hooks read, so such models are refused rather than misread.
LAYER_PATHS = ("model.layers", "language_model.model.layers", "model.language_model.layers")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, in order (Llama/Qwen2/Gemma3/Mistral/Phi3 and multimodal wrappers)."""
    for path in LAYER_PATHS:
        node: Any = model
        for attr in path.split("."):
            node = getattr(node, attr, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList) and len(node) > 0:
            return node
    raise AxisguardError(
        f"cannot find the decoder blocks of {type(model).__name__} (looked for {', '.join(LAYER_PATHS)})",
        "supported: decoder-only models whose blocks live at model.model.layers (Llama, Qwen2, Gemma3, Mistral, Phi3)",
    )
