"""scripts/refusal_response: the generated tokens' hidden states it reads, and its summaries of them."""

from __future__ import annotations

import numpy as np
import torch

from integrations.hf_loading import encode_prompts
from integrations.tiny_models import build_tiny_model
from scripts.refusal_response import response_states, summaries


def test_response_states_are_the_hidden_states_of_the_generated_tokens():
    loaded = build_tiny_model("llama", 64, num_layers=4, seed=11)
    prompts = ["a short one", "a somewhat longer prompt that needs left padding in its batch", "third"]
    layers = [1, 3]
    texts, states = response_states(loaded, prompts, layers, new_tokens=6, batch_size=2, cache=None)
    assert len(texts) == len(states) == len(prompts)
    encoded = encode_prompts(loaded.tokenizer, prompts, loaded.use_chat_template)
    for ids, got in zip(encoded, states, strict=True):
        assert got.ndim == 3 and got.shape[1:] == (len(layers), 64) and got.shape[0] <= 5
        # the same prompt alone (no padding), then prompt + response in one forward:
        # position len(prompt) + j is generated token j
        x = torch.tensor([ids])
        with torch.inference_mode():
            sequence = loaded.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=6,
                                             do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
            hidden = loaded.model(sequence, output_hidden_states=True).hidden_states
        for j in range(got.shape[0]):
            for k, layer in enumerate(layers):
                expected = hidden[layer + 1][0, len(ids) + j].numpy()
                np.testing.assert_allclose(got[j, k].astype(np.float32), expected, rtol=1e-2, atol=1e-3)


def test_summaries_follow_the_monitor_and_fall_back_to_the_prompt():
    z_prompt = np.array([0.5, -1.0])
    out = summaries([np.array([1.0, 3.0, 2.0]), np.zeros(0)], z_prompt, alpha=0.5)
    assert out["prompt"].tolist() == [0.5, -1.0]
    assert out["mean"][0] == 2.0 and out["max"][0] == 3.0 and out["last"][0] == 2.0
    assert out["ema"][0] == 0.5 * 2.0 + 0.5 * (0.5 * 3.0 + 0.5 * 1.0)  # starts at the first token, not the prompt
    assert all(out[k][1] == -1.0 for k in ("mean", "max", "last", "ema"))
