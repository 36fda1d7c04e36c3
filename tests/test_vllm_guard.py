"""The runtime guard inside a real vLLM engine: per-request steering and stopping, overrides, verdicts,
request cleanup, and errors that are counted while the request completes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.vllm_support import (
    ALWAYS,
    flush_finished,
    inprocess_engine,
    session_of,
    switchable_policy,
    tiny_guarded_files,
)

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

SCORE_LAYER = 2
POLICY = switchable_policy(
    "test-guard", ["enabled", "*.enabled", "*.strength"], steer="{method: add, strength: 4.0}",
    extra_rules=f"  - {{name: stop_generation, axis: refusal, score: generation, min_tokens: 3, threshold: {ALWAYS},"
                " action: stop, enabled: false}\n")
PROMPTS = ["The first prompt, somewhat longer than the others.", "second prompt", "and a third one"]
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    files = tiny_guarded_files(tmp_path_factory.mktemp("vllm_guard"), POLICY, SCORE_LAYER)
    with inprocess_engine(files["folder"], {"AXISGUARD_PACK": str(files["pack"]), "AXISGUARD_POLICY": str(files["policy"])}) as engine:
        yield engine


def params(overrides: dict[str, Any] | None = None, max_tokens: int = MAX_TOKENS) -> Any:
    from vllm import SamplingParams

    extra = {"axisguard": overrides} if overrides else None
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, extra_args=extra)


def run(llm: Any, per_prompt: list[Any]) -> list[Any]:
    outputs = llm.generate(PROMPTS, per_prompt, use_tqdm=False)
    flush_finished(llm)
    return outputs


def tokens(outputs: list[Any]) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


@pytest.fixture(scope="module")
def baseline(llm: Any) -> list[list[int]]:
    return tokens(run(llm, [params()] * 3))


def verdicts(llm: Any, outputs: list[Any]) -> list[dict[str, Any]]:
    from integrations.vllm.verdicts import attach_verdicts

    found = attach_verdicts(llm, outputs)
    assert all(v is not None for v in found)
    return found  # type: ignore[return-value]


def guard_of(llm: Any) -> Any:
    return session_of(llm).consumer.guard


def metric(llm: Any, name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(name, {"model_name": guard_of(llm).model_name, **labels})
    return value or 0.0


def test_flag_is_recorded_and_nothing_changes(llm: Any, baseline: list[list[int]]) -> None:
    outputs = run(llm, [params()] * 3)
    assert tokens(outputs) == baseline
    for verdict in verdicts(llm, outputs):
        assert verdict["actions"] == ["flag"]
        assert [f["rule"] for f in verdict["fired"]] == ["flag_all"]
        assert not verdict["steered"] and not verdict["stopped"]
        assert set(verdict["scores"]) == {"refusal", "toxicity"}
        assert verdict["prompt_tokens"] > 0


def test_steering_one_request_leaves_its_neighbours_identical(llm: Any, baseline: list[list[int]]) -> None:
    outputs = run(llm, [params(), params({"steer_prompt.enabled": True}), params()])
    got = tokens(outputs)
    assert got[0] == baseline[0] and got[2] == baseline[2]
    assert got[1] != baseline[1]
    steered = [v["steered"] for v in verdicts(llm, outputs)]
    assert steered == [False, True, False]


def test_zero_strength_steering_is_the_identity(llm: Any, baseline: list[list[int]]) -> None:
    outputs = run(llm, [params({"steer_prompt.enabled": True, "steer_prompt.strength": 0.0})] * 3)
    assert tokens(outputs) == baseline
    assert all(v["steered"] for v in verdicts(llm, outputs))


def test_stop_in_prompt_ends_that_request_only(llm: Any, baseline: list[list[int]]) -> None:
    outputs = run(llm, [params(), params(), params({"stop_prompt.enabled": True})])
    assert tokens(outputs)[:2] == baseline[:2]
    stopped = outputs[2].outputs[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == "" and len(stopped.token_ids) == 1  # just the forced EOS
    assert [v["stopped"] for v in verdicts(llm, outputs)] == [False, False, True]


def test_stop_during_generation(llm: Any, baseline: list[list[int]]) -> None:
    outputs = run(llm, [params({"stop_generation.enabled": True}), params(), params()])
    first = outputs[0].outputs[0]
    assert first.finish_reason == "stop"
    assert 3 <= len(first.token_ids) < MAX_TOKENS
    assert list(first.token_ids[:-1]) == baseline[0][: len(first.token_ids) - 1]
    verdict = verdicts(llm, outputs)[0]
    assert verdict["stopped"] and any(f["rule"] == "stop_generation" and f["phase"] == "generation"
                                      for f in verdict["fired"])


def test_guard_can_be_switched_off_per_request(llm: Any) -> None:
    from vllm import SamplingParams

    # HTTP clients send flat vllm_xargs; offline clients may use the same spelling.
    off = SamplingParams(max_tokens=2, temperature=0.0, extra_args={"axisguard.enabled": "false"})
    outputs = llm.generate(PROMPTS[:1], off, use_tqdm=False)
    flush_finished(llm)
    assert verdicts(llm, outputs)[0]["fired"] == []


def test_bad_override_is_rejected_at_admission(llm: Any) -> None:
    from vllm.exceptions import VLLMValidationError  # what vLLM turns into HTTP 400

    with pytest.raises(VLLMValidationError, match="stop_prompt.action"):
        llm.generate(PROMPTS[:1], params({"stop_prompt.action": "stop"}), use_tqdm=False)
    with pytest.raises(VLLMValidationError, match="bad value"):
        llm.generate(PROMPTS[:1], params({"steer_prompt.strength": "strong"}), use_tqdm=False)


def test_aborted_request_is_released(llm: Any) -> None:
    engine = llm.llm_engine
    session = session_of(llm)
    engine.add_request("to-abort", PROMPTS[0], params(max_tokens=50))
    for _ in range(6):
        engine.step()
    assert session.status()["active_requests"] == 1
    assert guard_of(llm).active_requests() == 1
    engine.abort_request(["to-abort"])
    flush_finished(llm)
    assert session.status()["active_requests"] == 0
    assert guard_of(llm).active_requests() == 0
    from integrations.vllm.verdicts import get_verdict

    verdict = get_verdict(llm, "to-abort")
    assert verdict is not None and verdict["request_id"].startswith("to-abort-")


def test_a_raising_hook_is_counted_and_the_request_completes(llm: Any, baseline: list[list[int]],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    session = session_of(llm)
    before_session = session.errors["hook"]
    before_metric = metric(llm, "axisguard_errors_total", stage="score")

    def broken(*args: Any) -> None:
        raise RuntimeError("injected hook failure")

    monkeypatch.setattr(session.consumer, "on_step", broken)
    outputs = run(llm, [params()] * 3)
    assert tokens(outputs) == baseline
    assert all(o.outputs[0].finish_reason == "length" for o in outputs)
    assert session.errors["hook"] > before_session
    assert metric(llm, "axisguard_errors_total", stage="score") > before_metric


def test_a_raising_hook_stops_the_request_when_fail_closed(llm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    guard = guard_of(llm)
    monkeypatch.setattr(guard, "policy", guard.policy.model_copy(update={"on_error": "fail_closed"}))
    monkeypatch.setattr(session_of(llm).consumer, "on_step", lambda *a: 1 / 0)
    outputs = run(llm, [params()] * 3)
    for output in outputs:
        assert output.outputs[0].finish_reason == "stop" and len(output.outputs[0].token_ids) == 1
    assert all(v["stopped"] for v in verdicts(llm, outputs))


def test_an_error_inside_the_guard_is_counted_and_the_request_completes(
        llm: Any, baseline: list[list[int]], monkeypatch: pytest.MonkeyPatch) -> None:
    guard = guard_of(llm)
    before = metric(llm, "axisguard_errors_total", stage="score")

    def broken(*args: Any) -> None:
        raise RuntimeError("injected scoring failure")

    monkeypatch.setattr(guard.monitor, "score", broken)
    outputs = run(llm, [params()] * 3)
    assert tokens(outputs) == baseline
    assert metric(llm, "axisguard_errors_total", stage="score") > before


def test_actions_are_counted_in_metrics(llm: Any) -> None:
    labels = {"axis": "toxicity", "action": "flag", "rule": "flag_all"}
    before = metric(llm, "axisguard_actions_total", **labels)
    run(llm, [params()] * 3)
    assert metric(llm, "axisguard_actions_total", **labels) == before + 3


def test_every_sample_of_n_is_guarded_and_has_its_verdict(llm: Any) -> None:
    """n > 1 (issue #13): each sample is its own engine request; all are scored and stopped, and found."""
    from vllm import SamplingParams

    from integrations.vllm.verdicts import attach_verdicts

    sampling = SamplingParams(n=2, max_tokens=MAX_TOKENS, temperature=0.8,
                              extra_args={"axisguard": {"stop_prompt": {"enabled": True}}})
    [output] = llm.generate(PROMPTS[:1], sampling, use_tqdm=False)
    flush_finished(llm)
    attach_verdicts(llm, [output])
    found = output.axisguard_verdicts
    assert [v["index"] for v in found] == [0, 1] and all(v["stopped"] for v in found)
    assert all(len(sample.token_ids) <= 1 for sample in output.outputs)  # ended at once: the forced EOS
