"""Synthetic model families sharing one latent behaviour space (for fast, exact tests)."""

from __future__ import annotations

import numpy as np

from guard.model_info import ModelInfo
from probes.activations import ModelActivations


def latent_world(n_axes: int = 4, n_anchors: int = 120, dim: int = 32, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(n_axes, dim))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    anchors = rng.normal(size=(n_anchors, dim))

    def prompts(k: int, sign: int, n: int) -> np.ndarray:
        return rng.normal(size=(n, dim)) + sign * 1.5 * axes[k]

    return {
        "axes": axes,
        "anchors": anchors,
        "cal": {k: (prompts(k, 1, 40), prompts(k, -1, 40)) for k in range(n_axes)},
        "test": {k: (prompts(k, 1, 20), prompts(k, -1, 20)) for k in range(n_axes)},
    }


def family(world: dict, name: str, hidden: int, seed: int, noise: float = 0.2, layers=(1, 2, 3)) -> ModelActivations:
    """A model whose hidden states are a random linear image of the latent world plus noise."""
    rng = np.random.default_rng(seed)
    dim = world["anchors"].shape[1]
    maps = {layer: rng.normal(size=(dim, hidden)) for layer in layers}

    def f(x: np.ndarray, layer: int) -> np.ndarray:
        return x @ maps[layer] + noise * rng.normal(size=(len(x), hidden))

    def per_layer(x: np.ndarray) -> dict[int, np.ndarray]:
        return {layer: f(x, layer) for layer in layers}

    k_axes = len(world["axes"])
    return ModelActivations(
        ModelInfo(name, "synthetic", hidden, max(layers) + 1),
        anchors=per_layer(world["anchors"]),
        pos={f"a{k}": per_layer(world["cal"][k][0]) for k in range(k_axes)},
        neg={f"a{k}": per_layer(world["cal"][k][1]) for k in range(k_axes)},
        test_pos={f"a{k}": per_layer(world["test"][k][0]) for k in range(k_axes)},
        test_neg={f"a{k}": per_layer(world["test"][k][1]) for k in range(k_axes)},
    )
