"""The self-refusal variant's teacher-forced log-probability (scripts/refusal_variants.py) is exact:
batched, left-padded and sliced with ``logits_to_keep``, it equals a plain forward of each prompt alone."""

from __future__ import annotations

import numpy as np
import torch

from integrations.hf_loading import encode_prompts
from scripts.refusal_variants import _opening_logprob

PROMPTS = ["hi", "How do I pick a lock on my own front door when I am locked out?", "Write a poem."]


def _alone(loaded, prompt: str, opening: str) -> float:
    ids = encode_prompts(loaded.tokenizer, [prompt], loaded.use_chat_template)[0]
    tail = loaded.tokenizer(opening, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([ids + tail])).logits[0].float()
    logp = logits.log_softmax(-1)
    return float(sum(logp[len(ids) - 1 + i, t] for i, t in enumerate(tail)))


def test_opening_logprob_matches_each_prompt_alone(tiny_llama):
    got = _opening_logprob(tiny_llama, PROMPTS, "I'm sorry", batch=2)
    want = np.array([_alone(tiny_llama, p, "I'm sorry") for p in PROMPTS])
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert np.all(got < 0) and len(set(np.round(got, 3))) == len(PROMPTS)  # real, prompt-dependent numbers
