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


def test_user_text_end_reads_the_users_last_token_inside_the_whole_prompt(tiny_llama):
    """The cut strings of the ``positions`` variant: their last token's hidden state (extracted without
    re-templating) equals that token's inside the whole templated prompt, and it is not the last token."""
    from integrations.hf_extraction import extract_activations
    from integrations.hf_loading import format_prompt
    from scripts.refusal_variants import _user_text_end

    cut = _user_text_end(tiny_llama, PROMPTS)
    assert all(c.endswith(p) for c, p in zip(cut, PROMPTS, strict=True))
    got = extract_activations(tiny_llama, cut, [2], use_chat_template=False, batch_size=2, progress=False)[2]
    for row, prompt in zip(got, PROMPTS, strict=True):
        ids = encode_prompts(tiny_llama.tokenizer, [prompt], True)[0]  # the whole prompt, as extraction reads it
        whole = format_prompt(tiny_llama.tokenizer, prompt, True)
        after_user = tiny_llama.tokenizer(whole.split(prompt)[-1], add_special_tokens=False)["input_ids"]
        user_end = len(ids) - 1 - len(after_user)
        assert len(after_user) > 0  # the template closes the turn after the user's text
        with torch.inference_mode():
            hidden = tiny_llama.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[3][0]
        np.testing.assert_allclose(row, hidden[user_end].float().numpy(), atol=1e-4)
        assert not np.allclose(row, hidden[-1].float().numpy(), atol=1e-3)
