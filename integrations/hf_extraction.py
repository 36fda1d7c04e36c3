"""Pooled residual-stream activations of a transformers model, batched and cached.

Layer convention (the project's): "layer L" is the residual stream after decoder block L
(0-based), i.e. what a forward hook on ``decoder_layers(model)[L]`` returns, which equals HF's
``output_hidden_states=True`` -> ``hidden_states[L + 1]`` for every L below the last block. For
the last block HF's final ``hidden_states`` entry has the final norm applied, so it differs;
this module always returns the raw block output, the same thing the vLLM hooks see.

Batches are LEFT-padded with position ids counted from each row's first real token, so a
prompt's activations do not depend on what else is in its batch; "last" pooling then takes
index -1 (the last real token of every row) and "mean" averages over real tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from guard.errors import AxisguardError
from integrations.activation_cache import ActivationCache, CacheKey, prompt_hash
from integrations.hf_loading import LoadedModel, decoder_layers, format_prompt, left_pad, uses_chat_template

Pooling = Literal["last", "mean"]
POOLINGS = ("last", "mean")


class _StopForward(Exception):
    """Raised by the deepest requested layer's hook: nothing after it needs computing."""


def _check_layers(loaded: LoadedModel, layers: Sequence[int]) -> list[int]:
    wanted = list(dict.fromkeys(int(x) for x in layers))
    if not wanted:
        raise AxisguardError("no layers requested", f"pass layers between 0 and {loaded.num_layers - 1}")
    bad = [x for x in wanted if not 0 <= x < loaded.num_layers]
    if bad:
        raise AxisguardError(
            f"layer(s) {bad} out of range for {loaded.name} ({loaded.num_layers} layers)",
            f"layers are 0-based decoder block indices: 0 .. {loaded.num_layers - 1}",
        )
    return wanted


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "last":
        return hidden[:, -1, :].float()  # left padding: the last column is every row's last token
    # masked_fill, not multiply: padded positions may hold NaN/inf garbage from fully masked rows
    real = mask.unsqueeze(-1).bool()
    summed = hidden.float().masked_fill(~real, 0.0).sum(dim=1)
    return summed / mask.sum(dim=1, keepdim=True).clamp_min(1).float()


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    ids, mask = left_pad(rows, pad_id)
    # Positions start at 0 on each row's first real token, as if the row were alone.
    positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
    return ids.to(device), mask.to(device), positions.to(device)


def _forward_pooled(
    loaded: LoadedModel,
    token_ids: list[list[int]],
    layers: list[int],
    pooling: str,
    batch_size: int,
    progress: bool,
) -> dict[int, np.ndarray]:
    """Run the model up to the deepest requested layer on every prompt; pooled [n, d] per layer."""
    n = len(token_ids)
    out = {layer: np.empty((n, loaded.hidden_size), dtype=np.float32) for layer in layers}
    # Longest first: similar lengths share a batch (little padding) and peak memory shows up at once.
    order = sorted(range(n), key=lambda i: -len(token_ids[i]))
    deepest = max(layers)
    blocks = decoder_layers(loaded.model)
    captured: dict[int, torch.Tensor] = {}
    current_mask: list[torch.Tensor] = []

    def make_hook(layer: int):
        def hook(module: torch.nn.Module, args: object, output: object) -> None:
            hidden: Any = output[0] if isinstance(output, tuple) else output
            captured[layer] = _pool(hidden, current_mask[0], pooling)
            if layer == deepest:
                raise _StopForward

        return hook

    pad_id = loaded.tokenizer.pad_token_id
    handles = [blocks[layer].register_forward_hook(make_hook(layer)) for layer in layers]
    try:
        with torch.inference_mode(), tqdm(
            total=n, desc=f"{loaded.name} activations", unit="prompt", disable=not progress, leave=False
        ) as bar:
            for start in range(0, n, batch_size):
                batch = order[start : start + batch_size]
                ids, mask, positions = _left_pad([token_ids[i] for i in batch], pad_id, loaded.device)
                current_mask[:] = [mask]
                captured.clear()
                try:
                    loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
                except _StopForward:
                    pass
                else:
                    raise RuntimeError(f"the hook on layer {deepest} never fired; cannot stop the forward early")
                for layer in layers:
                    out[layer][batch] = captured[layer].cpu().numpy()
                bar.update(len(batch))
    finally:
        for handle in handles:
            handle.remove()
    return out


def extract_activations(
    loaded: LoadedModel,
    prompts: Sequence[str],
    layers: Sequence[int],
    pooling: Pooling = "last",
    use_chat_template: bool | None = None,
    batch_size: int = 8,
    cache: ActivationCache | None = None,
    progress: bool = True,
) -> dict[int, np.ndarray]:
    """Pooled activations {layer: [len(prompts), d] float32}, in the order of ``prompts``.

    ``use_chat_template=None`` uses the model's default (``loaded.use_chat_template``). With a
    ``cache``, only prompts missing at some requested layer go through the model, and their
    results are stored. Duplicate prompts are computed once.
    """
    if pooling not in POOLINGS:
        raise AxisguardError(f"unknown pooling {pooling!r}", f"choose one of: {', '.join(POOLINGS)}")
    if batch_size < 1:
        raise AxisguardError(f"batch_size must be positive, got {batch_size}")
    wanted = _check_layers(loaded, layers)
    chat = uses_chat_template(loaded.tokenizer, loaded.use_chat_template if use_chat_template is None else use_chat_template)
    texts = [format_prompt(loaded.tokenizer, p, chat) for p in prompts]
    hashes = [prompt_hash(t) for t in texts]
    n = len(texts)
    results = {layer: np.zeros((n, loaded.hidden_size), dtype=np.float32) for layer in wanted}
    keys = {layer: CacheKey(loaded.fingerprint, layer, pooling, chat) for layer in wanted}

    needed = np.ones(n, dtype=bool)
    if cache is not None and n:
        needed[:] = False
        for layer in wanted:
            rows, found = cache.lookup(keys[layer], hashes)
            if rows is not None:
                results[layer][found] = rows[found]
            needed |= ~found

    # One forward per distinct missing text.
    first_index: dict[str, int] = {}
    for i in np.flatnonzero(needed):
        first_index.setdefault(hashes[i], int(i))
    if first_index:
        unique = list(first_index.values())
        token_ids = loaded.tokenizer([texts[i] for i in unique], add_special_tokens=not chat, padding=False)["input_ids"]
        _check_lengths(loaded, token_ids, [prompts[i] for i in unique])
        computed = _forward_pooled(loaded, token_ids, wanted, pooling, batch_size, progress)
        row_of = {hashes[i]: r for r, i in enumerate(unique)}
        missing = np.flatnonzero(needed)
        for layer in wanted:
            results[layer][missing] = computed[layer][[row_of[hashes[i]] for i in missing]]
            if cache is not None:
                cache.store(keys[layer], [hashes[i] for i in unique], computed[layer])
    return results


def _check_lengths(loaded: LoadedModel, token_ids: list[list[int]], prompts: Sequence[str]) -> None:
    limit = getattr(loaded.model.config.get_text_config(),  # type: ignore[union-attr,operator]
                    "max_position_embeddings", None)
    for ids, prompt in zip(token_ids, prompts, strict=True):
        if not ids:
            raise AxisguardError(f"prompt {prompt!r} tokenises to nothing", "drop empty prompts")
        if limit and len(ids) > limit:
            raise AxisguardError(
                f"a prompt is {len(ids)} tokens long, more than {loaded.name}'s {limit} positions",
                f"shorten it: {prompt[:80]!r}...",
            )
