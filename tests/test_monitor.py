"""Monitor state machine through the runtime facade: prompt/generation/token scores, thresholds,
windows, EMA, overrides, steering rows, cleanup, fail-open/closed and the row map."""

from __future__ import annotations

import json

import pytest
import torch
from prometheus_client import CollectorRegistry

from guard.errors import AxisguardError
from guard.metrics import GuardMetrics
from guard.policy import Policy
from guard.runtime import Guard, RowMap
from tests.pack_factory import AXES, hidden_for_z, random_pack

PACK = random_pack()
LAYER = PACK.layer


def zv(refusal: float = 0.0, toxicity: float = 0.0, sycophancy: float = 0.0) -> list[float]:
    return [refusal, toxicity, sycophancy]


def policy(*rules: dict, **extra) -> Policy:
    return Policy.model_validate({"rules": list(rules), **extra})


def step(guard: Guard, parts: list[tuple[str, list[list[float]], bool]], prompt_complete=None, layer=LAYER):
    """One forward step: ``parts`` = (request id, z rows, is_prompt) per request, rows contiguous."""
    ids, owner, prompt_flags, zs = [], [], [], []
    for i, (rid, rows, is_prompt) in enumerate(parts):
        ids.append(rid)
        owner += [i] * len(rows)
        prompt_flags += [is_prompt] * len(rows)
        zs += rows
    rows = RowMap(ids, torch.tensor(owner), torch.tensor(prompt_flags),
                  None if prompt_complete is None else torch.tensor(prompt_complete))
    hidden = hidden_for_z(PACK, zs, seed=len(zs))
    return guard.on_hidden(layer, hidden, rows), hidden


def fired_rules(guard: Guard, rid: str) -> dict[str, dict]:
    return {f["rule"]: f for f in guard.verdict(rid).fired}


def test_prompt_rule_judges_the_last_prompt_token():
    g = Guard(PACK, policy({"name": "harm", "axis": "refusal", "score": "prompt", "threshold": 2.0}))
    step(g, [("a", [zv(3.0), zv(0.0), zv(2.5)], True), ("b", [zv(3.0), zv(0.0), zv(1.0)], True)])
    a, b = g.verdict("a"), g.verdict("b")
    assert [f["rule"] for f in a.fired] == ["harm"] and b.fired == []
    assert a.fired[0]["score"] == pytest.approx(2.5, abs=1e-3)
    assert a.fired[0]["token_index"] == 2 and a.fired[0]["phase"] == "prompt"
    assert a.actions == ["flag"] and not a.steered and not a.stopped
    assert a.scores["refusal"]["prompt"] == pytest.approx(2.5, abs=1e-3)
    assert b.scores["refusal"]["prompt"] == pytest.approx(1.0, abs=1e-3)
    assert a.prompt_tokens == 3 and a.generated_tokens == 0


def test_chunked_prefill_is_judged_only_when_the_prompt_completes():
    g = Guard(PACK, policy({"name": "harm", "axis": "refusal", "score": "prompt", "threshold": 2.0}))
    step(g, [("a", [zv(0.0), zv(3.0)], True), ("b", [zv(0.0), zv(1.0)], True)], prompt_complete=[False, False])
    assert fired_rules(g, "a") == {} and fired_rules(g, "b") == {}
    step(g, [("a", [zv(1.0)], True), ("b", [zv(0.0), zv(3.0)], True)], prompt_complete=[True, True])
    assert fired_rules(g, "a") == {}
    assert fired_rules(g, "b")["harm"]["token_index"] == 3
    assert g.verdict("a").scores["refusal"]["prompt"] == pytest.approx(1.0, abs=1e-3)


def test_generation_ema_last_max_and_tokens_over_match_a_reference():
    alpha = 0.3
    g = Guard(PACK, policy({"name": "syc", "axis": "sycophancy", "score": "generation", "threshold": 50.0},
                           ema_alpha=alpha))
    values = [0.5, 2.0, -1.0, 3.0, 1.0, 2.5]
    step(g, [("one", [zv()], True), ("bulk", [zv()], True)])
    for v in values:  # one generated token per step for "one"
        step(g, [("one", [zv(sycophancy=v)], False)])
    step(g, [("bulk", [zv(sycophancy=v) for v in values[:4]], False)])  # speculative-style multi-row steps
    step(g, [("bulk", [zv(sycophancy=v) for v in values[4:]], False)])
    ema = values[0]
    for v in values[1:]:
        ema = alpha * v + (1 - alpha) * ema
    for rid in ("one", "bulk"):
        s = g.verdict(rid).scores["sycophancy"]
        assert s["ema"] == pytest.approx(ema, abs=1e-3)
        assert s["last"] == pytest.approx(2.5, abs=1e-3) and s["max"] == pytest.approx(3.0, abs=1e-3)
        assert s["tokens_over"] == sum(v > 50.0 for v in values)
        assert g.verdict(rid).generated_tokens == len(values)
    # tokens_over uses the lowest rule threshold on the axis, else the pack's midpoint (0.5 here)
    assert g.verdict("one").scores["refusal"]["tokens_over"] == 0


def test_generation_rule_waits_for_min_tokens():
    g = Guard(PACK, policy({"name": "syc", "axis": "sycophancy", "score": "generation", "threshold": 1.0,
                            "min_tokens": 3}))
    step(g, [("a", [zv()], True)])
    for i in range(3):
        step(g, [("a", [zv(sycophancy=4.0)], False)])
        assert ("syc" in fired_rules(g, "a")) == (i == 2)
    assert fired_rules(g, "a")["syc"]["token_index"] == 2


@pytest.mark.parametrize(("window", "fires_at"), [(3, 8), (None, 4)])
def test_token_rule_counts_tokens_over_threshold_in_a_window(window, fires_at):
    g = Guard(PACK, policy({"name": "tox", "axis": "toxicity", "score": "token", "threshold": 2.0,
                            "min_tokens": 2, "window": window}))
    pattern = [1, 0, 0, 0, 1, 0, 0, 1, 1]
    step(g, [("a", [zv()], True)])
    first = None
    for i, over in enumerate(pattern):
        step(g, [("a", [zv(toxicity=3.0 if over else 0.0)], False)])
        if first is None and "tox" in fired_rules(g, "a"):
            first = i
    assert first == fires_at
    assert fired_rules(g, "a")["tox"]["token_index"] == fires_at


def test_direction_below_and_fire_once():
    g = Guard(PACK, policy({"name": "low", "axis": "refusal", "score": "generation", "threshold": -1.0,
                            "direction": "below", "action": "stop"}, ema_alpha=0.5))
    step(g, [("a", [zv()], True)])
    step(g, [("a", [zv(refusal=0.0)], False)])
    assert not g.should_stop("a")
    step(g, [("a", [zv(refusal=-3.0)], False)])
    assert g.should_stop("a")
    step(g, [("a", [zv(refusal=-3.0)], False)])
    verdict = g.verdict("a")
    assert len(verdict.fired) == 1 and verdict.fired[0]["token_index"] == 1
    assert verdict.stopped and verdict.actions == ["stop"]


def test_per_request_overrides_and_their_validation():
    g = Guard(PACK, policy({"name": "harm", "axis": "refusal", "score": "prompt", "threshold": 2.0},
                           allow_overrides=["enabled", "harm.threshold"]))
    g.start_request("strict", {"harm.threshold": 0.5})
    g.start_request("off", {"enabled": "false"})
    g.start_request("nested", {"harm": {"threshold": "auto"}})  # auto = pack midpoint 0.5
    step(g, [(rid, [zv(1.0)], True) for rid in ("strict", "off", "nested", "default")])
    assert "harm" in fired_rules(g, "strict") and "harm" in fired_rules(g, "nested")
    assert fired_rules(g, "off") == {} and fired_rules(g, "default") == {}
    assert fired_rules(g, "strict")["harm"]["threshold"] == pytest.approx(0.5)
    with pytest.raises(AxisguardError) as not_allowed:
        g.start_request("x", {"harm.action": "stop"})
    assert "harm.action" in str(not_allowed.value) and "harm.threshold" in str(not_allowed.value)
    with pytest.raises(AxisguardError) as bad_value:
        g.start_request("y", {"harm.threshold": "very"})
    assert "'very'" in str(bad_value.value) and "auto" in str(bad_value.value)


def test_padding_rows_are_neither_scored_nor_counted():
    registry = CollectorRegistry()
    g = Guard(PACK, policy({"name": "harm", "axis": "refusal", "score": "prompt", "threshold": 2.0}),
              GuardMetrics("m", registry))
    rows = RowMap(["a"], torch.tensor([-1, -1, 0, 0]), torch.ones(4, dtype=torch.bool))
    hidden = hidden_for_z(PACK, [zv(5.0), zv(5.0), zv(0.0), zv(1.0)])
    assert g.on_hidden(LAYER, hidden, rows) is None
    assert fired_rules(g, "a") == {}
    g.flush_metrics()
    scored = registry.get_sample_value("axisguard_tokens_scored_total", {"model_name": "m", "phase": "prompt"})
    assert scored == 2


def test_state_is_dropped_and_slots_are_reused_without_growth():
    g = Guard(PACK, policy({"name": "harm", "axis": "refusal", "score": "prompt", "threshold": 2.0}))
    capacity = g.monitor.capacity
    for i in range(50):
        rid = f"r{i}"
        step(g, [(rid, [zv(3.0 if i % 2 == 0 else 0.0)], True)])
        step(g, [(rid, [zv()], False)])
        final = g.finish_request(rid)
        assert bool(final.fired) == (i % 2 == 0)  # a reused slot never inherits the previous request's state
        assert g.active_requests() == 0
    assert g.monitor.capacity == capacity
    assert g.finish_request("r0") is None and g.should_stop("r0") is False


def test_capacity_grows_with_concurrency_and_keeps_state():
    g = Guard(PACK, policy({"name": "harm", "axis": "refusal", "score": "prompt", "threshold": 2.0}))
    step(g, [("first", [zv(3.0)], True)])
    parts = [(f"c{i}", [zv(0.0)], True) for i in range(40)]
    step(g, parts)
    assert g.active_requests() == 41 and g.monitor.capacity >= 41
    assert "harm" in fired_rules(g, "first")
    assert g.verdict("first").scores["refusal"]["prompt"] == pytest.approx(3.0, abs=1e-3)
    for rid, *_ in parts:
        g.finish_request(rid)
    assert g.active_requests() == 1


def test_trajectory_is_kept_only_when_asked_and_bounded():
    rule = {"name": "harm", "axis": "refusal", "score": "prompt", "threshold": 2.0}
    kept, plain = Guard(PACK, policy(rule), trajectory_tokens=4), Guard(PACK, policy(rule))
    for g in (kept, plain):
        step(g, [("a", [zv()], True)])
        for t in range(10):
            step(g, [("a", [zv(toxicity=float(t) / 10)], False)])
    trajectory = kept.verdict("a").trajectory
    assert [round(v, 2) for v in trajectory["toxicity"]] == [0.0, 0.1, 0.2, 0.3]
    assert plain.verdict("a").trajectory is None and "trajectory" not in plain.verdict("a").to_json()


STEER_RULE = {"name": "harm", "axis": "refusal", "score": "prompt", "threshold": 2.0, "action": "steer",
              "steer": {"method": "add", "strength": 1.5, "duration": 2}}


def test_steering_starts_at_the_trigger_row_of_the_firing_request_only():
    g = Guard(PACK, policy(STEER_RULE))
    delta, _ = step(g, [("a", [zv(0.0), zv(3.0)], True), ("b", [zv(0.0), zv(0.0), zv(0.0)], True)])
    assert delta is not None
    norms = delta.norm(dim=1)
    assert norms[0] == 0 and norms[1] == pytest.approx(1.5) and torch.all(norms[2:] == 0)
    direction = torch.tensor(PACK.vectors[0])
    assert torch.allclose(delta[1], 1.5 * direction, atol=1e-6)
    for _ in range(2):  # duration: two generated tokens
        delta, _ = step(g, [("a", [zv()], False), ("b", [zv()], False)])
        assert delta[0].norm() == pytest.approx(1.5) and delta[1].norm() == 0
    delta, _ = step(g, [("a", [zv()], False), ("b", [zv()], False)])
    assert delta is None or torch.all(delta == 0)
    assert g.verdict("a").steered and not g.verdict("b").steered


def test_steering_below_the_score_layer_starts_one_step_later():
    rule = dict(STEER_RULE, steer={"method": "add", "strength": 1.0, "layers": [1, 3]})
    g = Guard(PACK, policy(rule))
    assert g.layers == [1, 2, 3]
    rows = RowMap(["a"], torch.tensor([0, 0]), torch.ones(2, dtype=torch.bool))
    prompt = hidden_for_z(PACK, [zv(0.0), zv(3.0)])
    assert g.on_hidden(1, prompt, rows) is None  # not fired yet
    assert g.on_hidden(2, prompt, rows) is None  # score layer: fired, but layer 2 is not a steer layer
    above = g.on_hidden(3, prompt, rows)
    assert above is not None and above[1].norm() == pytest.approx(1.0) and above[0].norm() == 0
    decode = RowMap(["a"], torch.tensor([0]), torch.zeros(1, dtype=torch.bool))
    below = g.on_hidden(1, hidden_for_z(PACK, [zv()]), decode)
    assert below is not None and below[0].norm() == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
def test_errors_are_caught_counted_and_fail_open_or_closed(mode, monkeypatch):
    registry = CollectorRegistry()
    g = Guard(PACK, policy({"name": "harm", "axis": "refusal", "score": "prompt", "threshold": 2.0}, on_error=mode),
              GuardMetrics("m", registry))

    def broken(hidden):
        raise RuntimeError("scoring kernel exploded")

    monkeypatch.setattr(g.monitor, "score", broken)
    for _ in range(3):
        delta, _ = step(g, [("a", [zv(3.0)], True)])
        assert delta is None
    assert registry.get_sample_value("axisguard_errors_total", {"model_name": "m", "stage": "score"}) == 3
    verdict = g.verdict("a")
    assert verdict.errors == 3
    assert g.should_stop("a") == (mode == "fail_closed") == verdict.stopped
    assert ("stop" in verdict.actions) == (mode == "fail_closed")


def test_deferred_event_mode_gives_the_same_verdicts():
    rules = [STEER_RULE, {"name": "stop_tox", "axis": "toxicity", "score": "token", "threshold": 2.0,
                          "min_tokens": 2, "action": "stop"}]
    outputs = []
    for defer in (False, True):
        g = Guard(PACK, policy(*rules), defer_events=defer)
        step(g, [("a", [zv(3.0)], True), ("b", [zv(0.0)], True)])
        stops = []
        deltas = []
        for t in range(4):
            delta, _ = step(g, [("a", [zv()], False), ("b", [zv(toxicity=3.0 if t > 0 else 0.0)], False)])
            deltas.append(None if delta is None else delta.norm(dim=1).tolist())
            stops.append((g.should_stop("a"), g.should_stop("b")))
        outputs.append((json.dumps(g.verdict("a").to_json()), json.dumps(g.verdict("b").to_json()), stops,
                        [d for d in deltas if d is not None and any(d)]))
    assert outputs[0] == outputs[1]


def test_verdict_json_has_the_agreed_shape():
    g = Guard(PACK, policy(STEER_RULE))
    step(g, [("a", [zv(3.0)], True)])
    data = json.loads(json.dumps(g.finish_request("a").to_json()))
    assert {"request_id", "scores", "fired", "actions", "steered", "stopped", "errors"} <= set(data)
    assert set(data["scores"]) == set(AXES)
    assert set(data["scores"]["refusal"]) == {"prompt", "last", "ema", "max", "tokens_over"}
    assert set(data["fired"][0]) == {"rule", "axis", "action", "score", "threshold", "phase", "token_index"}


def test_unknown_axes_are_skipped_or_refused():
    rules = [{"name": "ok", "axis": "refusal", "threshold": 2.0}, {"name": "ghost", "axis": "privacy", "threshold": 1}]
    g = Guard(PACK, policy(*rules))
    assert [r.rule.name for r in g.rules] == ["ok"] and g.policy_check.skipped == ["ghost"]
    with pytest.raises(AxisguardError, match="privacy"):
        Guard(PACK, policy(*rules, unknown_axes="error"))


def test_rowmap_from_query_start_loc_mixed_prefill_and_decode():
    # a: chunk of 3 of a 6-token prompt; b: one decode token; c: the last 3 tokens of a 5-token prompt
    rows = RowMap.from_query_start_loc(["a", "b", "c"], [0, 3, 4, 7], [6, 5, 5], [0, 9, 2])
    assert rows.row_request.tolist() == [0, 0, 0, 1, 2, 2, 2]
    assert rows.is_prompt.tolist() == [True, True, True, False, True, True, True]
    assert rows.prompt_complete.tolist() == [False, False, True]
    padded = RowMap.padded(["x", "y"], torch.tensor([[0, 1, 1], [1, 1, 1]]), is_prompt=True)
    assert padded.row_request.tolist() == [-1, 0, 0, 1, 1, 1]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _drive(guard: Guard, device: str, dtype=torch.float32, steps: int = 12) -> None:
    prompt = RowMap(["a", "b"], torch.tensor([0, 0, 1, 1]), torch.ones(4, dtype=torch.bool))
    guard.on_hidden(LAYER, hidden_for_z(PACK, [zv(), zv(3.0), zv(), zv(1.0)]).to(device, dtype), prompt)
    decode = RowMap(["a", "b"], torch.tensor([0, 1]), torch.zeros(2, dtype=torch.bool))
    for t in range(steps):
        hidden = hidden_for_z(PACK, [zv(toxicity=0.2 * t), zv(sycophancy=3.0 if t > 6 else 0.0)], seed=t)
        guard.on_hidden(LAYER, hidden.to(device, dtype), decode)


@CUDA
def test_cuda_verdicts_match_cpu():
    rules = [STEER_RULE, {"name": "syc", "axis": "sycophancy", "score": "token", "threshold": 2.0, "min_tokens": 2,
                          "window": 4, "action": "stop"}]
    verdicts = {}
    for device in ("cpu", "cuda"):
        g = Guard(PACK, policy(*rules))
        _drive(g, device)
        verdicts[device] = [g.verdict(r).to_json() for r in ("a", "b")]
        assert g._defer == (device == "cuda")
    for cpu, gpu in zip(verdicts["cpu"], verdicts["cuda"], strict=True):
        assert [(f["rule"], f["token_index"]) for f in cpu["fired"]] == [(f["rule"], f["token_index"]) for f in gpu["fired"]]
        for axis in AXES:
            for key in ("prompt", "ema", "max"):
                assert cpu["scores"][axis][key] == pytest.approx(gpu["scores"][axis][key], abs=1e-3)


@CUDA
def test_cuda_steps_that_fire_nothing_never_sync_the_host():
    registry = CollectorRegistry()
    rules = [dict(STEER_RULE, threshold=50.0),
             {"name": "tox", "axis": "toxicity", "score": "generation", "threshold": 50.0, "action": "stop"}]
    g = Guard(PACK, policy(*rules), GuardMetrics("m", registry), metrics_every=10_000, metrics_interval_s=1e9)
    _drive(g, "cuda", torch.bfloat16, steps=1)  # first step moves state to the device (allowed to sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        decode = RowMap(["a", "b"], torch.tensor([0, 1]), torch.zeros(2, dtype=torch.bool))
        hidden = hidden_for_z(PACK, [zv(), zv()]).to("cuda", torch.bfloat16)
        for _ in range(20):
            g.on_hidden(LAYER, hidden, decode)
            g.should_stop("a")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert registry.get_sample_value("axisguard_errors_total", {"model_name": "m", "stage": "score"}) is None
    assert registry.get_sample_value("axisguard_errors_total", {"model_name": "m", "stage": "policy"}) is None
    assert registry.get_sample_value("axisguard_errors_total", {"model_name": "m", "stage": "steer"}) is None
    assert g.verdict("a").errors == 0 and g.verdict("a").generated_tokens == 21
