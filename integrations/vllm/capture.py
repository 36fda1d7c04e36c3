"""Activation capture through the guard's tap (``tap_op``): pooled prompt activations per request and layer.

This is the step consumer behind ``--engine vllm`` extraction (``integrations.vllm.capture``): it
sees exactly the rows the guard sees (same tap, same row map), and pools each request's prompt
rows the way the transformers path does: ``last`` = the last prompt token's residual stream,
``mean`` = the mean over prompt tokens. Prompts split over several steps by chunked prefill are
accumulated across steps. Generated-token rows are ignored.

Activation extraction through vLLM (``axisguard calibrate/adapt --engine vllm``).

For models too large for the transformers path on one device (e.g. 70B on several GPUs with
tensor parallelism), anchor and axis activations are read inside vLLM with the very tap the
guard uses (``capture``). Prompts are tokenised with the transformers path's convention
(``integrations.hf_loading.encode_prompts``: chat template XOR special tokens) and handed to vLLM
as token ids, so both engines read identical tokens; each prompt then runs one prefill
(``max_tokens=1``) and its pooled residual stream comes back from the worker.

``fingerprint`` here is ``integrations.fingerprints.folder_fingerprint`` (from the folder's files,
not the loaded weights): it identifies the model but is not equal to ``LoadedModel.fingerprint``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guard.errors import AxisguardError
from integrations.environment import environment
from integrations.fingerprints import folder_fingerprint
from integrations.vllm.config import GuardConfig
from integrations.vllm.engine import served_model_from_folder
from integrations.vllm.row_mapping import StepRows
from integrations.vllm.verdicts import external_id


class CaptureConsumer:
    """Records pooled prompt activations; never steers, never stops."""

    def __init__(self, layers: Sequence[int], pooling: str = "last") -> None:
        self.layers = sorted(set(layers))
        self.pooling = pooling
        self._sums: dict[tuple[str, int], torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._done: dict[str, dict[int, np.ndarray]] = {}

    # --- step consumer protocol (see integrations.vllm.session) ---------------------------------------

    def start_request(self, request_id: str, overrides: Mapping[str, Any] | None = None) -> None:
        pass

    def on_step(self, layer: int, hidden: torch.Tensor, step: StepRows) -> torch.Tensor | None:
        positions = step.positions()
        owner = step.row_request()
        prompt_len = step.num_prompt[owner]
        prompt_rows = positions < prompt_len
        if not prompt_rows.any():
            return None
        is_last = positions == prompt_len - 1
        rows = np.flatnonzero(is_last if self.pooling == "last" else prompt_rows)
        if len(rows) == 0:
            return None
        # Sum the selected rows per request in one scatter, then loop over requests (not tokens).
        requests, inverse = np.unique(owner[rows], return_inverse=True)
        picked = hidden[torch.from_numpy(rows).to(hidden.device)].float()
        sums = torch.zeros(len(requests), picked.shape[1], device=picked.device)
        sums.index_add_(0, torch.from_numpy(inverse).to(picked.device), picked)
        counts = np.bincount(inverse, minlength=len(requests))
        completes = np.zeros(len(requests), dtype=bool)
        np.logical_or.at(completes, inverse, is_last[rows])
        for j, req in enumerate(requests.tolist()):
            rid = step.request_ids[req]
            key = (rid, layer)
            self._sums[key] = self._sums[key] + sums[j] if key in self._sums else sums[j]
            if layer == self.layers[0]:
                self._counts[rid] = self._counts.get(rid, 0) + int(counts[j])
            if completes[j] and layer == self.layers[-1]:
                self._complete(rid)
        return None

    def should_stop(self, request_id: str) -> bool:
        return False

    def finish_request(self, request_id: str) -> dict[str, Any] | None:
        return None

    def verdict(self, request_id: str) -> dict[str, Any] | None:
        return None

    def active_requests(self) -> int:
        return len(self._counts)

    # --- results ----------------------------------------------------------------------------------------

    def _complete(self, rid: str) -> None:
        count = max(self._counts.pop(rid, 1), 1)
        out = {}
        for layer in self.layers:
            total = self._sums.pop((rid, layer))
            out[layer] = (total / count if self.pooling == "mean" else total).cpu().numpy()
        self._done[rid] = out

    def take(self) -> dict[str, dict[int, np.ndarray]]:
        """Pooled activations of every request whose prompt has been read since the last call."""
        done, self._done = self._done, {}
        return done


log = logging.getLogger(__name__)

def _default_engine_kwargs() -> dict[str, Any]:
    from vllm.platforms import current_platform

    kwargs: dict[str, Any] = {"max_model_len": 2048, "seed": 0}
    if current_platform.is_cpu():
        # vLLM's CPU default reserves most of the host's memory for KV cache; extraction needs little.
        kwargs.update(dtype="float32", kv_cache_memory_bytes=1 << 30)
    return kwargs


class VllmExtractor:
    """Pooled prompt activations of a model, read inside a vLLM engine.

    Same attributes as ``integrations.hf_loading.LoadedModel`` that the collection code reads
    (``name``, ``architecture``, ``hidden_size``, ``num_layers``, ``use_chat_template``, ``fingerprint``).
    Extra keyword arguments go to ``vllm.LLM`` (e.g. ``tensor_parallel_size=8``).
    """

    def __init__(self, model_spec: str | Path, use_chat_template: bool | None = None, pooling: str = "last",
                 batch_size: int = 256, **engine_kwargs: Any) -> None:
        from integrations.model_resolution import resolve_model

        if pooling not in ("last", "mean"):
            raise AxisguardError(f"pooling {pooling!r} is not supported", "allowed: last, mean")
        resolved = resolve_model(model_spec)
        served = served_model_from_folder(resolved.path)
        self.path = resolved.path
        self.name = resolved.name
        self.architecture = served.model_type
        self.hidden_size = served.hidden_size
        self.num_layers = served.num_layers
        self.pooling = pooling
        self.batch_size = batch_size
        self.engine_kwargs = {**_default_engine_kwargs(), **engine_kwargs}
        if pooling == "mean":  # a prefix-cache hit would leave the cached prompt rows out of the mean
            self.engine_kwargs.setdefault("enable_prefix_caching", False)
        self._tokenizer = self._load_tokenizer()
        from integrations.hf_loading import uses_chat_template

        wanted = resolved.use_chat_template if use_chat_template is None else use_chat_template
        self.use_chat_template = uses_chat_template(self._tokenizer, wanted)
        self.fingerprint = folder_fingerprint(self.path)

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        from integrations.hf_loading import prepare_tokenizer

        return prepare_tokenizer(AutoTokenizer.from_pretrained(str(self.path), local_files_only=True))

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        from integrations.hf_loading import encode_prompts

        return encode_prompts(self._tokenizer, list(prompts), self.use_chat_template)

    def extract(self, prompts: Sequence[str], layers: Sequence[int]) -> dict[int, np.ndarray]:
        """``{layer: [n_prompts, d] float32}`` pooled over each prompt (see the module docstring)."""
        layers = sorted(set(int(layer) for layer in layers))
        bad = [layer for layer in layers if not 0 <= layer < self.num_layers]
        if bad:
            raise AxisguardError(f"layer {bad[0]} is out of range for {self.name} ({self.num_layers} layers)",
                                 f"use 0..{self.num_layers - 1}")
        out = {layer: np.zeros((len(prompts), self.hidden_size), dtype=np.float32) for layer in layers}
        if not prompts:
            return out
        token_ids = self.encode(prompts)
        llm = self._start_engine(layers)
        try:
            from vllm import SamplingParams

            params = SamplingParams(max_tokens=1, temperature=0.0)
            for start in range(0, len(token_ids), self.batch_size):
                chunk = token_ids[start:start + self.batch_size]
                outputs = llm.generate([{"prompt_token_ids": ids} for ids in chunk], params, use_tqdm=False)
                position = {o.request_id: start + i for i, o in enumerate(outputs)}
                captured = next(r for r in llm.collective_rpc("axisguard_call", args=("captures",)) if r is not None)
                values = np.frombuffer(captured["data"], dtype=np.float32).reshape(captured["shape"])
                index = {layer: j for j, layer in enumerate(captured["layers"])}
                for i, rid in enumerate(captured["ids"]):
                    row = position[external_id(rid)]
                    for layer in layers:
                        out[layer][row] = values[i, index[layer]]
                missing = set(position) - {external_id(r) for r in captured["ids"]}
                if missing:
                    raise AxisguardError(f"vLLM returned no activations for {len(missing)} prompts",
                                         "this is a bug; please report it with the model and prompts")
        finally:
            llm.llm_engine.engine_core.shutdown()
        return out

    def _start_engine(self, layers: Sequence[int]) -> Any:
        """A vLLM engine whose workers capture ``layers`` (configured through the environment)."""
        from vllm import LLM

        from integrations.vllm.plugin import install

        capture = GuardConfig(mode="capture", capture_layers=tuple(layers), capture_pooling=self.pooling)  # type: ignore[arg-type]
        with environment(capture.to_env()):
            install()  # this process may have loaded the plugin before the capture was configured
            return LLM(model=str(self.path), tokenizer=str(self.path), **self.engine_kwargs)
