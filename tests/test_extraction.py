"""Activation extraction (layer convention, padding, pooling, early stop) and its on-disk cache."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from guard.errors import AxisguardError
from integrations.activation_cache import ActivationCache, CacheKey, prompt_hash
from integrations.hf_extraction import extract_activations
from integrations.hf_loading import decoder_layers, encode_prompts
from integrations.tiny_models import build_tiny_model

SHORT = "Hi"
PROMPTS = [
    SHORT,
    "A much longer prompt, with many more tokens than the short one, so that it forces left padding.",
    "Medium-length prompt here.",
    "Another one of a different length!",
]


def hidden_states_alone(loaded, prompt: str) -> tuple[torch.Tensor, ...]:
    """HF's own hidden states for one unpadded prompt: hidden_states[L + 1] is layer L."""
    ids = torch.tensor(encode_prompts(loaded.tokenizer, [prompt], loaded.use_chat_template))
    with torch.inference_mode():
        return loaded.model(input_ids=ids, output_hidden_states=True).hidden_states


class ForwardCounter:
    """Counts prompts that enter the model (a pre-hook on the top module; removed on exit)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.prompts, self.calls = model, 0, 0

    def __enter__(self) -> ForwardCounter:
        def count(module, args, kwargs):
            self.calls += 1
            self.prompts += kwargs["input_ids"].shape[0]

        self.handle = self.model.register_forward_pre_hook(count, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


# --- layer convention, padding, pooling -------------------------------------------------------------


def test_layer_L_is_hidden_states_L_plus_1(tiny_llama):
    layers = list(range(tiny_llama.num_layers))
    acts = extract_activations(tiny_llama, [PROMPTS[1]], layers, progress=False)
    hs = hidden_states_alone(tiny_llama, PROMPTS[1])
    for layer in layers[:-1]:
        np.testing.assert_allclose(acts[layer][0], hs[layer + 1][0, -1].numpy(), atol=1e-5)
    # HF's last hidden_states entry has the final norm applied; the raw block output does not.
    last = layers[-1]
    assert not np.allclose(acts[last][0], hs[last + 1][0, -1].numpy(), atol=1e-3)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "mistral", "phi3"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_padding_does_not_change_a_prompts_activations(arch: str, pooling: str):
    loaded = build_tiny_model(arch, 64, num_layers=3, seed=2)
    in_batch = extract_activations(loaded, PROMPTS, [0, 2], pooling=pooling, progress=False)
    alone = extract_activations(loaded, [SHORT], [0, 2], pooling=pooling, progress=False)
    for layer in (0, 2):
        np.testing.assert_allclose(in_batch[layer][0], alone[layer][0], atol=1e-4, rtol=0)
        assert np.abs(alone[layer][0]).max() > 1e-3  # not trivially zero


def test_rows_come_back_in_prompt_order(tiny_llama):
    batch = extract_activations(tiny_llama, PROMPTS, [1], batch_size=2, progress=False)[1]
    for i, prompt in enumerate(PROMPTS):
        alone = extract_activations(tiny_llama, [prompt], [1], progress=False)[1]
        np.testing.assert_allclose(batch[i], alone[0], atol=1e-4)
    assert not np.allclose(batch[0], batch[1], atol=1e-3)


def test_mean_pooling_averages_real_tokens_only(tiny_llama):
    acts = extract_activations(tiny_llama, PROMPTS, [2], pooling="mean", progress=False)[2]
    for i, prompt in enumerate(PROMPTS):
        expected = hidden_states_alone(tiny_llama, prompt)[3][0].mean(dim=0).numpy()
        np.testing.assert_allclose(acts[i], expected, atol=1e-5)


def test_raw_text_mode_reads_the_unformatted_prompt(tiny_llama):
    raw = extract_activations(tiny_llama, [PROMPTS[2]], [1], use_chat_template=False, progress=False)[1]
    ids = torch.tensor([tiny_llama.tokenizer(PROMPTS[2]).input_ids])  # BOS + text, no template
    with torch.inference_mode():
        expected = tiny_llama.model(input_ids=ids, output_hidden_states=True).hidden_states[2][0, -1]
    np.testing.assert_allclose(raw[0], expected.numpy(), atol=1e-5)
    templated = extract_activations(tiny_llama, [PROMPTS[2]], [1], progress=False)[1]
    assert not np.allclose(raw, templated, atol=1e-3)


def test_forward_stops_after_the_deepest_requested_layer(tiny_llama):
    blocks = decoder_layers(tiny_llama.model)
    ran: list[str] = []
    handles = [blocks[i].register_forward_pre_hook(lambda m, a, i=i: ran.append(f"block{i}")) for i in range(4)]
    handles.append(tiny_llama.model.lm_head.register_forward_pre_hook(lambda m, a: ran.append("lm_head")))
    try:
        early = extract_activations(tiny_llama, PROMPTS, [0, 1], progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert set(ran) == {"block0", "block1"}
    # Stopping early changes nothing about the layers that were computed.
    full = extract_activations(tiny_llama, PROMPTS, [0, 1, 3], progress=False)
    for layer in (0, 1):
        np.testing.assert_array_equal(early[layer], full[layer])


def test_bad_arguments_are_user_errors(tiny_llama):
    with pytest.raises(AxisguardError, match="out of range"):
        extract_activations(tiny_llama, PROMPTS, [4], progress=False)
    with pytest.raises(AxisguardError, match="pooling"):
        extract_activations(tiny_llama, PROMPTS, [0], pooling="max", progress=False)  # type: ignore[arg-type]
    with pytest.raises(AxisguardError, match="no layers"):
        extract_activations(tiny_llama, PROMPTS, [], progress=False)
    empty = extract_activations(tiny_llama, [], [1], progress=False)
    assert empty[1].shape == (0, tiny_llama.hidden_size)


# --- cache ----------------------------------------------------------------------------------------


def test_cache_hit_miss_and_partial_hits(tiny_llama, tmp_path: Path):
    cache = ActivationCache(tmp_path / "acts")
    with ForwardCounter(tiny_llama.model) as counter:
        cold = extract_activations(tiny_llama, PROMPTS, [1, 2], cache=cache, progress=False)
    assert counter.prompts == len(PROMPTS)

    # A new cache object on the same folder (as another process would be) serves everything.
    with ForwardCounter(tiny_llama.model) as counter:
        warm = extract_activations(tiny_llama, PROMPTS, [1, 2], cache=ActivationCache(tmp_path / "acts"), progress=False)
    assert counter.calls == 0
    for layer in (1, 2):
        np.testing.assert_array_equal(cold[layer], warm[layer])

    # Partial hit: only the new prompts go through the model; a duplicate is computed once.
    new = ["A prompt the cache has not seen.", "Nor this one."]
    mixed = [new[0], PROMPTS[1], new[1], new[0]]
    with ForwardCounter(tiny_llama.model) as counter:
        got = extract_activations(tiny_llama, mixed, [1, 2], cache=cache, progress=False)
    assert counter.prompts == 2
    uncached = extract_activations(tiny_llama, mixed, [1, 2], progress=False)
    for layer in (1, 2):
        np.testing.assert_allclose(got[layer], uncached[layer], atol=1e-5)


def test_cache_keys_separate_layer_pooling_template_and_model(tiny_llama, tmp_path: Path):
    cache = ActivationCache(tmp_path / "acts")
    extract_activations(tiny_llama, PROMPTS, [1], cache=cache, progress=False)
    other_model = build_tiny_model("llama", 64, num_layers=4, seed=99)
    variants = [
        (tiny_llama, dict(layers=[2])),
        (tiny_llama, dict(layers=[1], pooling="mean")),
        (tiny_llama, dict(layers=[1], use_chat_template=False)),
        (other_model, dict(layers=[1])),
    ]
    for loaded, kwargs in variants:
        with ForwardCounter(loaded.model) as counter:
            extract_activations(loaded, PROMPTS, cache=cache, progress=False, **kwargs)
        assert counter.prompts == len(PROMPTS), kwargs


def test_cache_is_safetensors_only_and_compacts(tmp_path: Path):
    cache = ActivationCache(tmp_path, compact_after=3)
    key = CacheKey("f" * 64, layer=5, pooling="last", chat_template=True)
    rng = np.random.default_rng(0)
    rows = {prompt_hash(f"prompt {i}"): rng.normal(size=8).astype(np.float32) for i in range(10)}
    hashes = list(rows)
    for i in range(0, 10, 2):
        cache.store(key, hashes[i : i + 2], np.stack([rows[h] for h in hashes[i : i + 2]]))
    assert cache.shard_count(key) <= 3
    found_rows, found = ActivationCache(tmp_path).lookup(key, hashes + [prompt_hash("never stored")])
    assert found.tolist() == [True] * 10 + [False]
    np.testing.assert_array_equal(found_rows[:10], np.stack([rows[h] for h in hashes]))
    files = {p.suffix for p in tmp_path.rglob("*") if p.is_file()}
    assert files == {".safetensors"}


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from integrations.activation_cache import ActivationCache, CacheKey, prompt_hash
    root, worker = sys.argv[1], int(sys.argv[2])
    cache = ActivationCache(root, compact_after=4)
    key = CacheKey("c" * 64, layer=0, pooling="last", chat_template=False)
    for i in range(30):
        text = f"w{worker}-{i}"
        cache.store(key, [prompt_hash(text), prompt_hash("shared")], np.array([[worker, i], [7, 7]], np.float32))
    """
)


def test_concurrent_writers_lose_nothing(tmp_path: Path):
    repo = Path(__file__).resolve().parents[1]
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(w)], cwd=repo) for w in range(3)
    ]
    assert all(p.wait(timeout=300) == 0 for p in writers)
    key = CacheKey("c" * 64, layer=0, pooling="last", chat_template=False)
    hashes = [prompt_hash(f"w{w}-{i}") for w in range(3) for i in range(30)] + [prompt_hash("shared")]
    rows, found = ActivationCache(tmp_path).lookup(key, hashes)
    assert found.all()
    expected = [[w, i] for w in range(3) for i in range(30)] + [[7, 7]]
    np.testing.assert_array_equal(rows, np.array(expected, np.float32))
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temp files left behind


# --- a real model ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_padding_and_layer_convention():
    from integrations.hf_loading import load_model
    from integrations.model_pull import pull

    pull("smollm2-135m", quiet=True)
    loaded = load_model("smollm2-135m", pull_missing=False)
    layer = 22
    batch = extract_activations(loaded, PROMPTS, [layer], progress=False)[layer]
    alone = extract_activations(loaded, [SHORT], [layer], progress=False)[layer]
    scale = np.abs(alone).max()
    np.testing.assert_allclose(batch[0], alone[0], atol=1e-4 * scale)
    hs = hidden_states_alone(loaded, SHORT)
    np.testing.assert_allclose(alone[0], hs[layer + 1][0, -1].numpy(), atol=1e-4 * scale)
