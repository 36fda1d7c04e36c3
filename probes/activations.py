"""Activation sets: one model's hidden states for anchors and contrast pairs at a few layers.

Engine-agnostic container (plain numpy) filled by an extractor (transformers or vLLM) and consumed
by calibration, adaptation and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from guard.model_info import ModelInfo

DEPTH_FRACTIONS = tuple(i / 8 for i in range(1, 8))


def grid_layers(num_layers: int, fractions: tuple[float, ...] = DEPTH_FRACTIONS) -> list[int]:
    """Candidate layers at fixed depth fractions (1/8 ... 7/8), deduplicated, in order."""
    return sorted({min(num_layers - 1, max(0, round(f * (num_layers - 1)))) for f in fractions})


@dataclass
class ModelActivations:
    """``anchors[layer]`` [N, d]; ``pos[axis][layer]``/``neg[axis][layer]`` [n, d] for calibration
    pairs; ``test_pos``/``test_neg`` likewise for test pairs (may be empty)."""

    info: ModelInfo
    anchors: dict[int, np.ndarray]
    pos: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    neg: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    test_pos: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    test_neg: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    # unlabelled prompts run in the same pass (``collect_activations(extra_prompts=...)``), e.g. ordinary traffic
    extra: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.anchors)

    @property
    def axes(self) -> list[str]:
        return list(self.pos)
