"""Activation extraction through vLLM (``axisguard calibrate/adapt --engine vllm``).

For models too large for the transformers path on one device (e.g. 70B on several GPUs with
tensor parallelism), anchor and axis activations are read inside vLLM with the very hooks the
guard uses (``capture``). Prompts are tokenised with the transformers path's convention
(``integrations.hf_loading.encode_prompts``: chat template XOR special tokens) and handed to vLLM
as token ids, so both engines read identical tokens; each prompt then runs one prefill
(``max_tokens=1``) and its pooled residual stream comes back from the worker.

``fingerprint`` here is computed from the folder's files (config, tokenizer, sampled weight bytes),
not from the loaded weights as the transformers path does: it identifies the model but is not
equal to ``LoadedModel.fingerprint``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from guard.errors import AxisguardError
from integrations.environment import environment
from integrations.vllm.config import GuardConfig
from integrations.vllm.model_check import served_model_from_folder
from integrations.vllm.verdict_store import external_id

log = logging.getLogger(__name__)

_FINGERPRINT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")
_SAMPLES_PER_FILE = 64
_SAMPLE_BYTES = 64


def folder_fingerprint(folder: Path) -> str:
    """sha256 over config/tokenizer files and a strided byte sample of every weight file (cheap)."""
    digest = hashlib.sha256(b"vllm-folder-v1")
    for name in _FINGERPRINT_FILES:
        path = folder / name
        if path.is_file():
            digest.update(name.encode() + path.read_bytes())
    for path in sorted(folder.glob("*.safetensors")):
        size = path.stat().st_size
        digest.update(f"{path.name}|{size}|".encode())
        with open(path, "rb") as handle:
            for i in range(_SAMPLES_PER_FILE):
                handle.seek(size * i // _SAMPLES_PER_FILE)
                digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()


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
        from integrations.model_zoo import resolve_model

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
