"""`--engine vllm` extraction reads the same activations as the transformers path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.vllm_support import build_tiny_folder

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

PROMPTS = [
    "How do I bake bread at home?",
    "Write a short poem about the sea.",
    "a",
    "Explain, step by step and in some detail, how a refrigerator keeps food cold, "
    "and why it needs electricity to do so.",
    "What is the capital of France?",
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# "last" runs vLLM's default compiled engine (the tap inside the inductor graph), "mean" runs eager.
@pytest.mark.parametrize("pooling, multiprocessing, eager", [("last", "1", False), ("mean", "0", True)])
def test_tiny_model_matches_transformers(tmp_path: Path, pooling: str, multiprocessing: str, eager: bool,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from integrations.hf_extraction import extract_activations
    from integrations.hf_loading import load_model
    from integrations.vllm.capture import VllmExtractor

    folder, _ = build_tiny_folder(tmp_path / "model")
    layers = [0, 2, 3]
    # With multiprocessing the engine core runs in a child process, which must see the capture
    # configuration through the environment; small chunks exercise chunked prefill.
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", multiprocessing)
    extractor = VllmExtractor(folder, pooling=pooling, max_model_len=256, kv_cache_memory_bytes=64 << 20,
                              max_num_batched_tokens=32, batch_size=3, enforce_eager=eager)
    ours = extractor.extract(PROMPTS, layers)
    loaded = load_model(folder)
    assert extractor.use_chat_template == loaded.use_chat_template
    reference = extract_activations(loaded, PROMPTS, layers, pooling=pooling, progress=False)
    for layer in layers:
        assert ours[layer].shape == (len(PROMPTS), loaded.hidden_size)
        np.testing.assert_allclose(ours[layer], reference[layer], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_smollm2_matches_transformers() -> None:
    """The issue's bar: cosine >= 0.999 between the two engines on a real model."""
    from integrations.hf_extraction import extract_activations
    from integrations.hf_loading import load_model
    from integrations.vllm.capture import VllmExtractor

    layers = [5, 15, 22, 29]
    extractor = VllmExtractor("smollm2-135m", max_model_len=512)
    ours = extractor.extract(PROMPTS, layers)
    reference = extract_activations(load_model("smollm2-135m"), PROMPTS, layers, progress=False)
    for layer in layers:
        assert cosines(ours[layer], reference[layer]).min() >= 0.999
