"""Tiny random-weight models of the real architectures, with a real tokenizer, built offline.

Tests and the vLLM integration need models that are real transformers/vLLM models (same classes,
same hooks, same layer layout) but load in milliseconds. ``build_tiny_model`` makes one from a
config of the requested family and a byte-level BPE tokenizer built with the ``tokenizers``
library (no hub). With ``save_to`` it also writes a normal HF folder that
``integrations.hf_loading.load_model`` and ``vllm.LLM(model=folder)`` can load.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from guard.errors import AxisguardError
from integrations.hf_loading import LoadedModel, wrap_model
from integrations.model_zoo import MODEL_CARD

TINY_ARCHS = ("llama", "qwen2", "gemma3", "mistral", "phi3")

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)

# A minimal chat format in the usual shape: role marker, content, end-of-turn, and the assistant
# marker as the generation prompt. It writes its own BOS (so templated prompts are tokenised
# without special tokens, like the real models).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
MAX_POSITIONS = 512


def build_tiny_tokenizer() -> Any:
    """Byte-level BPE over the 256 byte symbols (no merges) + special tokens; adds BOS itself."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    bos_id = vocab[BOS]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
        padding_side="left",
    )
    return tokenizer


_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3_text", "mistral": "mistral", "phi3": "phi3"}


def _as_loaders_see_it(tokenizer: Any, model_type: str) -> Any:
    """The tokenizer as ``AutoTokenizer`` will load it from a saved folder of this model type.

    transformers overrides the saved tokenizer class for some model types (qwen2 -> Qwen2Tokenizer,
    which adds NFC normalisation and an ``<|endoftext|>`` token), and vLLM loads tokenizers the same
    way. Round-tripping through disk first makes the in-memory model, the saved folder and the
    config's vocab size agree.
    """
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / "config.json").write_text(json.dumps({"model_type": model_type}))
        return AutoTokenizer.from_pretrained(tmp, local_files_only=True)


def _tiny_config(arch: str, hidden_size: int, num_layers: int, vocab_size: int, tokenizer: Any) -> Any:
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    # head_dim 32 is a size every attention backend supports (vLLM serving was checked with d=64,
    # i.e. head_dim 32); 16 only for sizes that are not multiples of 32. A GQA ratio of 2 where the
    # head count allows exercises grouped KV heads like the real models.
    head_dim = 32 if hidden_size % 32 == 0 else 16
    if hidden_size % head_dim or hidden_size < 32:
        raise AxisguardError(f"tiny models need a hidden size that is a multiple of 16 (>= 32), got {hidden_size}")
    heads = hidden_size // head_dim
    kv_heads = heads // 2 if heads % 2 == 0 else heads
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if arch == "llama":
        return LlamaConfig(**common, head_dim=head_dim)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "mistral":
        return MistralConfig(**common, head_dim=head_dim, sliding_window=None)
    if arch == "phi3":
        return Phi3Config(**common, original_max_position_embeddings=MAX_POSITIONS)
    if arch == "gemma3":
        # Alternate local (sliding) and global attention like Gemma 3's 5:1 pattern, compressed so
        # that even a 2-layer model has both kinds.
        layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]
        return Gemma3TextConfig(
            **common, head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=64, layer_types=layer_types
        )
    raise AxisguardError(f"unknown tiny architecture {arch!r}", f"choose one of: {', '.join(TINY_ARCHS)}")


def build_tiny_model(
    arch: str,
    hidden_size: int,
    num_layers: int = 4,
    seed: int = 0,
    save_to: Path | None = None,
) -> LoadedModel:
    """A random-weight ``arch`` model (float32, eval mode) with the tiny tokenizer.

    Deterministic in ``seed`` without touching the caller's global RNG state. With ``save_to`` the
    folder (config, safetensors, tokenizer, chat template, ``axisguard_model.json``) is written
    and the returned model's ``path`` points at it.
    """
    from transformers import AutoModelForCausalLM

    if arch not in TINY_ARCHS:
        raise AxisguardError(f"unknown tiny architecture {arch!r}", f"choose one of: {', '.join(TINY_ARCHS)}")
    tokenizer = _as_loaders_see_it(build_tiny_tokenizer(), _MODEL_TYPES[arch])
    config = _tiny_config(arch, hidden_size, num_layers, len(tokenizer), tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    name = f"tiny-{arch}-d{hidden_size}-l{num_layers}-s{seed}"
    if save_to is not None:
        save_to = Path(save_to)
        model.save_pretrained(save_to)
        tokenizer.save_pretrained(save_to)
        card = {
            "name": name,
            "architecture": config.model_type,
            "num_layers": num_layers,
            "hidden_size": hidden_size,
            "dtype": "float32",
            "chat_template": True,
            "source": {"tiny": True, "seed": seed},
        }
        (save_to / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
    return wrap_model(model, tokenizer, name, save_to, use_chat_template=True)
