"""Guarded generation with a transformers model: the runtime ``Guard`` hooked into HF ``generate``.

``apply(model, guard)`` installs, for the duration of a ``with`` block, a forward hook on every
decoder layer in ``guard.layers`` (the residual stream after block L, i.e. ``hidden_states[L+1]``)
and a pre-hook on the model that turns each forward's attention mask into a ``RowMap``: batch row
``b`` is request ``request_ids[b]``; left-padding columns and rows that already finished are
padding. The first forward of a ``generate`` call is the prompt (prefill), later ones are
generated tokens. A logits processor forces EOS for rows whose request the guard wants stopped, so
a ``stop`` ends that row only; a stopping criterion that never stops anything records which rows
emitted EOS, so they are neither scored nor steered afterwards.

``guarded_generate`` runs batches of prompts through all this (greedy by default, so runs are
reproducible) and returns per request the text, the actions taken and the score summary (with the
per-token trajectory when the guard keeps one). ``guard=None`` gives plain, unguarded generation
with the same batching and decoding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from guard.rows import RowMap
from guard.runtime import Guard
from integrations.hf_loading import LoadedModel, decoder_layers, encode_prompts, left_pad


class GenerateSession:
    """Per-``generate`` bookkeeping shared by the hooks of ``apply``."""

    def __init__(self, guard: Guard, model: nn.Module) -> None:
        self.guard = guard
        self.model = model
        self.request_ids: list[str] = []
        self.rows: RowMap | None = None
        self._prefill_next = False
        self.finished: torch.Tensor | None = None
        self._decode_rows: tuple[Any, RowMap] | None = None

    def begin(self, request_ids: Sequence[str]) -> None:
        """Start a ``generate`` call whose batch rows are these requests."""
        self.request_ids = list(request_ids)
        self.finished = torch.zeros(len(self.request_ids), dtype=torch.bool)
        self._prefill_next = True
        self._decode_rows = None
        self.rows = None

    def end(self) -> None:
        self.request_ids, self.rows, self.finished, self._decode_rows = [], None, None, None

    def _rows_for(self, attention_mask: torch.Tensor | None, batch: int, width: int) -> RowMap | None:
        if not self.request_ids or batch != len(self.request_ids):
            return None  # a forward outside guarded_generate (or a batch we do not know): leave it alone
        finished = self.finished if self.finished is not None else torch.zeros(batch, dtype=torch.bool)
        if self._prefill_next:
            self._prefill_next = False
            valid = (attention_mask[:, -width:].bool().cpu() if attention_mask is not None
                     else torch.ones(batch, width, dtype=torch.bool))
            return RowMap.padded(self.request_ids, valid & ~finished.unsqueeze(1), is_prompt=True)
        # Decode steps: the same map while no row finishes, so the guard's per-step indices are reused.
        key = (width, tuple(finished.tolist()))
        if self._decode_rows is None or self._decode_rows[0] != key:
            valid = ~finished.unsqueeze(1).expand(batch, width)
            self._decode_rows = (key, RowMap.padded(self.request_ids, valid, is_prompt=False))
        return self._decode_rows[1]

    def pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        try:
            ids: Any = kwargs.get("input_ids", args[0] if args else None)
            embeds: Any = kwargs.get("inputs_embeds")
            shape = ids.shape if ids is not None else embeds.shape[:2]
            self.rows = self._rows_for(kwargs.get("attention_mask"), int(shape[0]), int(shape[1]))
        except Exception as exc:
            self.rows = None
            self.guard.record_error("start", exc, self.request_ids)

    def layer_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            rows = self.rows
            if rows is None:
                return None
            try:
                hidden = output[0] if isinstance(output, tuple) else output
                delta = self.guard.on_hidden(layer, hidden, rows)
                if delta is None:
                    return None
                steered = hidden + delta
                return (steered, *output[1:]) if isinstance(output, tuple) else steered
            except Exception as exc:  # glue errors are guard errors too: never break generation
                self.guard.record_error("steer", exc, rows.request_ids)
                return None

        return hook


@contextlib.contextmanager
def apply(model: nn.Module, guard: Guard) -> Iterator[GenerateSession]:
    """Hook ``guard`` into ``model`` for the duration of the block; yields the session that
    ``guarded_generate`` (or your own loop: ``session.begin(ids)`` before each generate) drives."""
    session = GenerateSession(guard, model)
    layers = decoder_layers(model)
    handles = [model.register_forward_pre_hook(session.pre_forward, with_kwargs=True)]
    try:
        for layer in guard.layers:
            handles.append(layers[layer].register_forward_hook(session.layer_hook(layer)))
        yield session
    finally:
        for handle in handles:
            handle.remove()
        session.end()


class _StopRows:
    """Logits processor: rows whose request the guard stopped can only emit EOS."""

    def __init__(self, session: GenerateSession, eos_id: int) -> None:
        self.session = session
        self.eos_id = eos_id

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        guard, finished = self.session.guard, self.session.finished
        stop = [
            b for b, request_id in enumerate(self.session.request_ids)
            if not (finished is not None and finished[b]) and guard.should_stop(request_id)
        ]
        if stop:
            scores = scores.clone()
            scores[stop] = float("-inf")
            scores[stop, self.eos_id] = 0.0
        return scores


class _TrackFinished:
    """Stopping criterion that stops nothing: it records rows that emitted EOS (HF pads them after)."""

    def __init__(self, session: GenerateSession, eos_ids: Sequence[int]) -> None:
        self.session = session
        self.eos_ids = torch.tensor(list(eos_ids), dtype=torch.long)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        done = torch.isin(input_ids[:, -1].cpu(), self.eos_ids)
        if self.session.finished is not None:
            self.session.finished |= done
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@dataclass
class GuardedOutput:
    """One request's result: generated text and, when guarded, the guard's verdict (JSON-able)."""

    request_id: str
    prompt: str
    text: str
    token_ids: list[int]
    verdict: dict[str, Any] | None = None

    @property
    def actions(self) -> list[str]:
        return list(self.verdict["actions"]) if self.verdict else []


def eos_token_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """Every id that ends a generation: the generation config's (one or several) and the tokenizer's."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def guarded_generate(
    loaded: LoadedModel,
    prompts: Sequence[str],
    guard: Guard | None,
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    use_chat_template: bool | None = None,
    request_ids: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
    generation_kwargs: Mapping[str, Any] | None = None,
) -> list[GuardedOutput]:
    """Generate for every prompt (batched, left-padded, greedy unless ``generation_kwargs`` say
    otherwise), guarded by ``guard`` when given; returns one ``GuardedOutput`` per prompt, in order.

    ``overrides``: one mapping for all requests or one per prompt (see ``Guard.start_request``).
    Build the guard with ``trajectory_tokens=N`` to get each request's per-token score trajectory
    in its verdict. The guard's requests are finished (state dropped) before this returns.
    """
    from transformers import LogitsProcessorList, StoppingCriteriaList

    model, tokenizer = loaded.model, loaded.tokenizer
    templated = loaded.use_chat_template if use_chat_template is None else use_chat_template
    ids = list(request_ids) if request_ids is not None else [f"hf-{i}" for i in range(len(prompts))]
    if len(ids) != len(prompts):
        raise ValueError("request_ids must have one id per prompt")
    per_request = (list(overrides) if isinstance(overrides, Sequence) and not isinstance(overrides, str | bytes)
                   else [overrides] * len(prompts))
    encoded = encode_prompts(tokenizer, list(prompts), templated)
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    device = next(model.parameters()).device
    settings: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": pad_id,
                                "eos_token_id": eos_ids}
    settings.update(generation_kwargs or {})
    if guard is not None and (settings.get("num_beams", 1) > 1 or settings.get("num_return_sequences", 1) > 1):
        raise ValueError("guarded generation needs one sequence per prompt (no beams, no num_return_sequences)")
    outputs: list[GuardedOutput] = []
    with contextlib.ExitStack() as stack:
        session = stack.enter_context(apply(model, guard)) if guard is not None else None
        for start in range(0, len(prompts), batch_size):
            chunk = range(start, min(start + batch_size, len(prompts)))
            input_ids, mask = left_pad([encoded[i] for i in chunk], pad_id)
            extra: dict[str, Any] = {}
            if session is not None and guard is not None:
                for i in chunk:
                    guard.start_request(ids[i], per_request[i])
                session.begin([ids[i] for i in chunk])
                extra = {
                    "logits_processor": LogitsProcessorList([_StopRows(session, eos_ids[0])]),
                    "stopping_criteria": StoppingCriteriaList([_TrackFinished(session, eos_ids)]),
                }
            with torch.inference_mode():
                generated = model.generate(  # type: ignore[operator]
                    input_ids=input_ids.to(device), attention_mask=mask.to(device), **settings, **extra
                )
            new_tokens = generated[:, input_ids.shape[1]:].cpu()
            for row, i in enumerate(chunk):
                tokens = new_tokens[row].tolist()
                cut = next((j for j, t in enumerate(tokens) if t in eos_ids), len(tokens))
                tokens = tokens[:cut]
                verdict = None
                if guard is not None:
                    final = guard.finish_request(ids[i])
                    verdict = final.to_json() if final is not None else None
                outputs.append(GuardedOutput(ids[i], prompts[i], tokenizer.decode(tokens, skip_special_tokens=True),
                                             tokens, verdict))
            if session is not None:
                session.end()
        if guard is not None:
            guard.flush_metrics()
    return outputs
