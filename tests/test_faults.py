"""Faults inside the guard's step (the test-only ``AXISGUARD_TEST_FAULT`` switch) on a real tiny model:
a raising step, NaN / inf / all-zero hidden rows. Generation always completes; the guard counts,
logs once per kind and fails open or closed as its policy says; nothing non-finite reaches the model
or a verdict. (The same switch drives the real-server fault tests in ``test_reliability_server``.)"""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import CollectorRegistry

from guard.errors import AxisguardError
from guard.fault_injection import ENV_TEST_FAULT, FaultInjection
from guard.metrics import GuardMetrics
from guard.policy import Policy
from guard.runtime import Guard
from integrations.hf_guard import guarded_generate
from tests.test_hf_guard import PROMPTS, always, pack_for

NEW_TOKENS = 6


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    loaded = tiny_llama
    return loaded, pack_for(loaded), guarded_generate(loaded, PROMPTS, None, max_new_tokens=NEW_TOKENS)


@pytest.mark.parametrize("raw", ["boom", "raise:0", "raise:x", "nan:-1", "explode:2"])
def test_a_malformed_switch_names_the_variable(raw):
    with pytest.raises(AxisguardError, match=ENV_TEST_FAULT):
        FaultInjection.from_env({ENV_TEST_FAULT: raw})


def test_unset_switch_is_off():
    assert FaultInjection.from_env({}) is None and FaultInjection.from_env({ENV_TEST_FAULT: " "}) is None


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
def test_injected_raise_every_second_step(tiny, mode, monkeypatch, caplog):
    loaded, pack, baseline = tiny
    monkeypatch.setenv(ENV_TEST_FAULT, "raise:2")
    registry = CollectorRegistry()
    policy = Policy.model_validate({"on_error": mode, "rules": [
        {"name": "r", "axis": "refusal", "score": "prompt", "threshold": 1e6, "action": "flag"}]})
    guard = Guard(pack, policy, GuardMetrics("tiny", registry))
    with caplog.at_level(logging.WARNING, logger="guard.runtime"):
        out = guarded_generate(loaded, PROMPTS, guard, max_new_tokens=NEW_TOKENS)
    errors = registry.get_sample_value("axisguard_errors_total", {"model_name": "tiny", "stage": "score"})
    assert errors is not None and errors >= 1
    assert len([r for r in caplog.records if "InjectedFault" in r.getMessage()]) == 1  # once per kind
    assert all(o.verdict is not None and o.verdict["errors"] >= 1 for o in out)
    if mode == "fail_open":
        assert [o.token_ids for o in out] == [b.token_ids for b in baseline]  # unguarded, unchanged
        assert not any(o.verdict["stopped"] for o in out)
    else:  # the prompt step passed; the first generated step raised: one token, then stopped
        assert all(o.verdict["stopped"] and "stop" in o.actions for o in out)
        assert all(o.token_ids == b.token_ids[: len(o.token_ids)] and len(o.token_ids) < NEW_TOKENS
                   for o, b in zip(out, baseline, strict=True))
    assert guard.active_requests() == 0


@pytest.mark.parametrize("kind", ["nan", "inf", "zero"])
def test_non_finite_and_zero_rows_never_reach_the_stream_or_the_verdict(tiny, kind, monkeypatch):
    """Every row is replaced (``KIND:1``) and an always-on steer rule runs: the steering delta of a
    broken row is zero, so the output equals the unguarded one; verdicts stay strict JSON."""
    loaded, pack, baseline = tiny
    monkeypatch.setenv(ENV_TEST_FAULT, f"{kind}:1")
    registry = CollectorRegistry()
    guard = Guard(pack, always("steer", steer={"method": "add", "strength": 4.0, "relative": True}),
                  GuardMetrics("tiny", registry))
    out = guarded_generate(loaded, PROMPTS, guard, max_new_tokens=NEW_TOKENS)
    if kind != "zero":  # NaN/inf compare false against any threshold: nothing fires, nothing steers
        assert [o.token_ids for o in out] == [b.token_ids for b in baseline]
    for o in out:
        json.dumps(o.verdict, allow_nan=False)  # what the HTTP route sends must be valid JSON
    guard.flush_metrics()
    text = json.dumps({m.name: [s.value for s in m.samples] for m in registry.collect()}, allow_nan=True)
    assert "NaN" not in text and "Infinity" not in text  # histograms and drift stay finite
    assert guard.active_requests() == 0
