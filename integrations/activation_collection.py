"""Fill ``ModelActivations`` for a catalogue by running a model (transformers or vLLM engine).

All prompts of a model (anchors, calibration and test pairs) go through one extraction call so
batching is efficient and the activation cache is hit per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from guard.errors import AxisguardError
from guard.model_info import ModelInfo
from probes.activations import ModelActivations, grid_layers
from probes.catalogue import Catalogue


def _slices(catalogue: Catalogue, splits: Sequence[str]) -> tuple[list[str], dict[tuple[str, str, str], slice]]:
    prompts: list[str] = list(catalogue.anchors)
    where = {("anchors", "", ""): slice(0, len(prompts))}
    for split in splits:
        source = catalogue.calibration if split == "calibration" else catalogue.test
        for axis, pairs in source.items():
            for side in ("positive", "negative"):
                start = len(prompts)
                prompts.extend(getattr(p, side) for p in pairs)
                where[(split, axis, side)] = slice(start, len(prompts))
    return prompts, where


def collect_activations(
    model_spec: str,
    catalogue: Catalogue,
    layers: Sequence[int] | None = None,
    splits: Sequence[str] = ("calibration", "test"),
    use_chat_template: bool | None = None,
    engine: str = "transformers",
    batch_size: int = 8,
    anchors_only: bool = False,
    extra_prompts: Sequence[str] = (),
) -> ModelActivations:
    """Run ``model_spec`` on the catalogue's prompts at ``layers`` (default: the depth grid); ``extra_prompts``
    (unlabelled, e.g. ordinary traffic) go through the same pass and land in ``.extra``."""
    if engine == "vllm":
        from integrations.vllm.capture import VllmExtractor

        extractor = VllmExtractor(model_spec, use_chat_template=use_chat_template)
        info_src: Any = extractor
    else:
        from integrations.activation_cache import ActivationCache
        from integrations.hf_extraction import extract_activations
        from integrations.hf_loading import load_model

        loaded = load_model(model_spec)
        info_src = loaded
    template = info_src.use_chat_template if use_chat_template is None else use_chat_template
    info = ModelInfo(info_src.name, info_src.architecture, info_src.hidden_size, info_src.num_layers,
                     chat_template=template, fingerprint=info_src.fingerprint)
    chosen = list(layers) if layers is not None else grid_layers(info.num_layers)
    bad = [layer for layer in chosen if not 0 <= layer < info.num_layers]
    if bad:
        raise AxisguardError(
            f"layer {bad[0]} is out of range for {info.name} ({info.num_layers} layers)", f"use 0..{info.num_layers - 1}"
        )
    prompts, where = _slices(catalogue, () if anchors_only else splits)
    if extra_prompts:
        where[("extra", "", "")] = slice(len(prompts), len(prompts) + len(extra_prompts))
        prompts = prompts + list(extra_prompts)
    if engine == "vllm":
        acts = extractor.extract(prompts, chosen)
    else:
        acts = extract_activations(loaded, prompts, chosen, use_chat_template=template, batch_size=batch_size,
                                   cache=ActivationCache())

    def take(key: tuple[str, str, str]) -> dict[int, np.ndarray]:
        return {layer: acts[layer][where[key]] for layer in chosen}

    out = ModelActivations(info=info, anchors=take(("anchors", "", "")),
                           extra=take(("extra", "", "")) if extra_prompts else {})
    for (split, axis, side) in where:
        if split in ("anchors", "extra"):
            continue
        target = {("calibration", "positive"): out.pos, ("calibration", "negative"): out.neg,
                  ("test", "positive"): out.test_pos, ("test", "negative"): out.test_neg}[(split, side)]
        target[axis] = take((split, axis, side))
    return out
