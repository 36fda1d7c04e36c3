"""Loading a model for activation work with transformers, and the prompt conventions around it.

Prompt convention (shared with the vLLM side, so both engines read the same tokens): a prompt is
either wrapped as a single user turn with the generation prompt (``format_prompt`` with
``use_chat_template=True``, when the tokenizer has a template) and tokenised WITHOUT adding
special tokens (the template writes its own), or used as raw text and tokenised WITH them (so
models that need a BOS, like Gemma, get it). ``encode_prompts`` does exactly that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from guard.errors import AxisguardError
from integrations.decoder_layers import decoder_layers
from integrations.fingerprints import model_fingerprint
from integrations.model_resolution import ResolvedModel, resolve_model

# Where the decoder blocks live, per family: Llama, Qwen2, Gemma3 (text), Mistral and Phi3 all use
# ``model.model.layers``; multimodal wrappers nest the text model one level deeper.

# Config keys that describe how a model was saved or loaded rather than what it computes.


@dataclass
class LoadedModel:
    """A model ready for hooks: eval mode, left-padding tokenizer with a pad token.

    ``architecture`` is the HF ``model_type`` (``llama``, ``qwen2``, ``gemma3_text``, ...), the
    name both engines agree on. ``fingerprint`` identifies weights + config + tokenizer (see
    ``model_fingerprint``); the activation cache is keyed by it.
    """

    model: nn.Module
    tokenizer: Any
    name: str
    path: Path | None
    architecture: str
    hidden_size: int
    num_layers: int
    use_chat_template: bool
    fingerprint: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding (so the last real token is at index -1) and a pad token (eos if none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise AxisguardError("the tokenizer has neither a pad nor an eos token", "add a pad token to it")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def uses_chat_template(tokenizer: Any, use_chat_template: bool) -> bool:
    """Whether prompts will really be templated: asked for, and the tokenizer has a template."""
    return bool(use_chat_template and getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, text: str, use_chat_template: bool) -> str:
    """The exact string the model reads for ``text``: a single user turn + generation prompt when
    asked and a template exists, else ``text`` unchanged."""
    if not uses_chat_template(tokenizer, use_chat_template):
        return text
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def encode_prompts(tokenizer: Any, texts: Sequence[str], use_chat_template: bool) -> list[list[int]]:
    """Token ids for raw prompts under the module's convention (template XOR special tokens)."""
    templated = uses_chat_template(tokenizer, use_chat_template)
    formatted = [format_prompt(tokenizer, t, use_chat_template) for t in texts]
    return tokenizer(formatted, add_special_tokens=not templated, padding=False)["input_ids"]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows as one left-padded batch: ``(input_ids, attention_mask)``, both [B, max_len]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):  # a loop over prompts, once per batch
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids, mask


def wrap_model(
    model: nn.Module,
    tokenizer: Any,
    name: str,
    path: Path | None = None,
    use_chat_template: bool = True,
) -> LoadedModel:
    """Build a ``LoadedModel`` around objects already in memory (tiny test models, notebooks)."""
    model.eval()
    prepare_tokenizer(tokenizer)
    config = model.config.get_text_config()  # type: ignore[union-attr,operator]
    layers = decoder_layers(model)
    if len(layers) != config.num_hidden_layers:
        raise AxisguardError(
            f"{name}: config says {config.num_hidden_layers} layers but the model has {len(layers)} blocks"
        )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        path=Path(path) if path is not None else None,
        architecture=str(config.model_type),
        hidden_size=int(config.hidden_size),
        num_layers=int(config.num_hidden_layers),
        use_chat_template=uses_chat_template(tokenizer, use_chat_template),
        fingerprint=model_fingerprint(model, tokenizer),
    )


def load_model(
    spec: str | Path | ResolvedModel, dtype: torch.dtype = torch.float32, pull_missing: bool = True
) -> LoadedModel:
    """Load a zoo name, local folder or ``ResolvedModel`` (never the hub) for hooks and extraction."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = spec if isinstance(spec, ResolvedModel) else resolve_model(spec, pull_missing=pull_missing)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(resolved.path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(resolved.path), dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise AxisguardError(
            f"could not load the model in {resolved.path}: {exc}",
            "the folder must hold an HF causal LM (config.json, safetensors weights, tokenizer)",
        ) from exc
    return wrap_model(model, tokenizer, resolved.name, resolved.path, resolved.use_chat_template)
