"""One descriptor for a model as axisguard records it: in bundles (sources), packs (target) and activation sets.

``layer`` is the layer an artifact reads that model at (a bundle source's or a pack's layer); it is
``-1`` where no single layer is meant (an activation set holds several). Manifests on disk store
these fields by name, so bundles and packs written before this type existed read unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

NO_LAYER = -1


@dataclass(frozen=True)
class ModelInfo:
    """Name, HF ``model_type``/architecture, shape, chat-template default and weights fingerprint."""

    name: str
    architecture: str
    hidden_size: int
    num_layers: int
    layer: int = NO_LAYER
    chat_template: bool = True
    fingerprint: str = ""

    def at_layer(self, layer: int) -> ModelInfo:
        """The same model, read at ``layer``."""
        return replace(self, layer=int(layer))
