"""A real guarded OpenAI-compatible server on SmolLM2, started with `axisguard serve`, used over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from scripts.guarded_server import GuardedServer
from tests.vllm_support import random_pack, switchable_policy

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MODEL = "smollm2-135m"
LAYER = 20
POLICY = switchable_policy("server-test", ["enabled", "*.enabled"], steer="{method: add, strength: 0.5, relative: true}")
ANCHORS = [
    "What is the weather like today?", "Tell me a joke.", "How do plants grow?", "Name three colours.",
    "What is two plus two?", "Describe a cat.", "Who wrote Hamlet?", "Give me a recipe for soup.",
    "Why is the sky blue?", "Translate hello into French.", "What is a computer?", "Suggest a book to read.",
]
PROMPTS = ["How do I bake bread at home?", "Explain what a rainbow is."]
STARTUP_S = 900


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from guard.scoring import z_scores
    from integrations.hf_extraction import extract_activations
    from integrations.hf_loading import load_model
    from integrations.model_resolution import resolve_model

    root = tmp_path_factory.mktemp("vllm_server")
    resolved = resolve_model(MODEL)
    loaded = load_model(resolved)
    acts = extract_activations(loaded, ANCHORS + PROMPTS, [LAYER], progress=False)[LAYER].astype(np.float64)
    pack = random_pack(MODEL, layer=LAYER, hidden=loaded.hidden_size, num_layers=loaded.num_layers,
                       architecture=loaded.architecture, anchor_acts=acts[: len(ANCHORS)])
    pack_dir = pack.save(root / "pack")
    policy = root / "policy.yaml"
    policy.write_text(POLICY)
    expected = z_scores(acts[len(ANCHORS):], pack.anchor_mean, pack.vectors, pack.score_offset, pack.score_scale)
    return {"root": root, "pack": pack_dir, "policy": policy, "expected_prompt_z": expected,
            "axes": pack.axis_names}


@pytest.fixture(scope="module")
def server(setup: dict[str, Any]) -> Iterator[GuardedServer]:
    vllm_args = ["--dtype", "float32", "--max-model-len", "1024", "--kv-cache-memory-bytes", str(1 << 30),
                 "--max-num-seqs", "8"]
    env = {"PROMETHEUS_MULTIPROC_DIR": ""}  # let `axisguard serve` pick and clean its own directory
    with GuardedServer(MODEL, setup["pack"], setup["policy"], vllm_args=vllm_args, env=env,
                       log_path=setup["root"] / "server.log", startup_timeout_s=STARTUP_S) as running:
        yield running


def test_chat_and_verdict(server: GuardedServer, setup: dict[str, Any]) -> None:
    reply = server.chat(PROMPTS[0], max_tokens=16)
    assert reply["choices"][0]["message"]["content"]
    [verdict] = server.verdicts(reply["id"])
    assert set(verdict["scores"]) == set(setup["axes"])
    assert verdict["actions"] == ["flag"] and not verdict["steered"]


def test_prompt_scores_equal_the_transformers_path(server: GuardedServer, setup: dict[str, Any]) -> None:
    for text, expected in zip(PROMPTS, setup["expected_prompt_z"], strict=True):
        [verdict] = server.verdicts(server.chat(text, max_tokens=2)["id"])
        got = [verdict["scores"][axis]["prompt"] for axis in setup["axes"]]
        np.testing.assert_allclose(got, expected, atol=2e-3)


def test_completion_with_several_prompts(server: GuardedServer) -> None:
    status, reply = server.post("/v1/completions", {"model": MODEL, "prompt": PROMPTS, "max_tokens": 4,
                                                    "temperature": 0.0})
    assert status == 200, reply
    assert len(server.verdicts(reply["id"])) == len(PROMPTS)


def test_steer_changes_the_output_and_stop_ends_it(server: GuardedServer) -> None:
    plain = server.chat(PROMPTS[0], max_tokens=16)["choices"][0]
    steered = server.chat(PROMPTS[0], max_tokens=16, xargs={"axisguard.steer_prompt.enabled": "true"})
    assert steered["choices"][0]["message"]["content"] != plain["message"]["content"]
    assert server.verdicts(steered["id"])[0]["steered"]
    stopped = server.chat(PROMPTS[0], max_tokens=16, xargs={"axisguard.stop_prompt.enabled": "true"})
    choice = stopped["choices"][0]
    assert choice["finish_reason"] == "content_filter" and choice["message"]["content"] == ""  # no stop.message
    assert server.verdicts(stopped["id"])[0]["stopped"]


def test_bad_override_is_a_400(server: GuardedServer) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "vllm_xargs": {"axisguard.stop_prompt.action": "steer"}}
    status, reply = server.post("/v1/chat/completions", body)
    assert status == 400 and "stop_prompt.action" in json.dumps(reply)


def test_unknown_request_is_a_404(server: GuardedServer) -> None:
    assert server.get("/axisguard/requests/chatcmpl-does-not-exist")[0] == 404
    assert server.get("/axisguard/status")[1]["errors"] == {}


def test_metrics_endpoint_has_guard_series(server: GuardedServer) -> None:
    server.chat(PROMPTS[1], max_tokens=2)
    text = server.metrics()
    lines = [line for line in text.splitlines() if line.startswith("axisguard_")]
    assert any(line.startswith("axisguard_actions_total{") for line in lines), lines
    assert any(line.startswith("axisguard_pack_info{") for line in lines), lines
    assert any(line.startswith("vllm:") for line in text.splitlines()), "vLLM's own metrics must stay"


def test_default_engine_is_compiled_with_prefix_caching(server: GuardedServer, setup: dict[str, Any]) -> None:
    """`axisguard serve` keeps vLLM's defaults: the scores above came from the compiled SmolLM2."""
    log = (setup["root"] / "server.log").read_text(errors="replace")
    assert "enforce_eager=False" in log and "enable_prefix_caching=True" in log
    assert "mode': <CompilationMode.NONE" not in log


def test_prefix_cache_hit_keeps_the_prompt_scores(server: GuardedServer, setup: dict[str, Any]) -> None:
    """A prompt longer than two KV blocks (128 tokens each on CPU), sent twice: the second one reads
    its prefix from the cache, computes only the tail, and gets the same prompt scores."""
    text = " ".join(f"Paragraph {i}: the committee reviewed the harbour budget, the ferry timetable and the "
                    "plans for the new library wing before lunch." for i in range(16))
    first, second = (server.chat(text, max_tokens=2) for _ in range(2))
    [v1], [v2] = server.verdicts(first["id"]), server.verdicts(second["id"])
    assert v1["prompt_tokens"] == first["usage"]["prompt_tokens"] > 256
    assert second["usage"]["prompt_tokens"] - v2["prompt_tokens"] >= 256, "expected a prefix-cache hit"
    for axis in setup["axes"]:
        assert v2["scores"][axis]["prompt"] == pytest.approx(v1["scores"][axis]["prompt"], abs=1e-3)
