"""Model fingerprints: short sha256 ids that change when a model's weights, config or tokenizer change.

One concept, two readings, because the two engines see a model differently:

* ``model_fingerprint`` (transformers path): from the loaded module (config, a strided sample of every
  weight tensor, the tokenizer); equal for a model built in memory and the same model reloaded.
  The activation cache is keyed by it.
* ``folder_fingerprint`` (vLLM path, which never loads the weights into this process): from the
  folder's files (config, tokenizer files, a strided byte sample of every safetensors file).

They identify the same model consistently within one engine; the two values are not equal.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

_VOLATILE_CONFIG_KEYS = {"transformers_version", "dtype", "torch_dtype", "use_cache", "architectures"}
_SAMPLES_PER_TENSOR = 256


def _config_digest(config: Any) -> bytes:
    body = {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k not in _VOLATILE_CONFIG_KEYS}
    return json.dumps(body, sort_keys=True, default=str).encode()


def model_fingerprint(model: nn.Module, tokenizer: Any) -> str:
    """sha256 over the config, a strided sample of every weight tensor, and the tokenizer.

    Cheap (a few hundred values per tensor, no full pass over the weights) yet it changes when
    the weights are retrained or re-initialised, when the dtype changes, or when tokenisation
    changes. It is the same for a model built in memory and the same model reloaded from disk.
    """
    digest = hashlib.sha256(_config_digest(model.config))
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
            sample = flat[::step][:_SAMPLES_PER_TENSOR].to(torch.float64).cpu().numpy()
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            digest.update(sample.tobytes())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(backend.to_str().encode() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    return digest.hexdigest()


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
