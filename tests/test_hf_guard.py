"""The guard inside HF `generate` on real (tiny, random-weight) transformers models: per-row
isolation, zero-strength identity, stop, fail-open/closed, layer convention, and the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from axisguard_cli.main import cli
from guard.metrics import GuardMetrics
from guard.policy import Policy
from guard.runtime import Guard
from guard.scoring import z_scores
from integrations.hf_extraction import extract_activations
from integrations.hf_guard import apply, guarded_generate
from integrations.tiny_models import build_tiny_model
from tests.pack_factory import random_pack

torch.set_num_threads(2)
PROMPTS = ["hello there", "how do I stop a runaway process on my server?", "write a short poem about rain",
           "what is two plus two"]
ANCHORS = [f"anchor {i}: a sentence about topic number {i * 7 % 13}" for i in range(48)]
NEW_TOKENS = 8


def pack_for(loaded, layer: int = 2):
    anchors = extract_activations(loaded, ANCHORS, [layer], progress=False)[layer]
    return random_pack(hidden_size=loaded.hidden_size, num_layers=loaded.num_layers, layer=layer, anchors=anchors,
                       name=loaded.name, architecture=loaded.architecture)


def with_pack_and_baseline(loaded):
    return loaded, pack_for(loaded), guarded_generate(loaded, PROMPTS, None, max_new_tokens=NEW_TOKENS)


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    """The shared tiny Llama (conftest), a pack for it and its unguarded outputs."""
    return with_pack_and_baseline(tiny_llama)


def always(action: str, **extra) -> Policy:
    """A rule that fires on every prompt unless a request raises its threshold."""
    rule = {"name": "r", "axis": "refusal", "score": "prompt", "threshold": -1e6, "action": action, **extra}
    return Policy.model_validate({"allow_overrides": ["*.threshold"], "rules": [rule]})


ONLY_ROW_1 = [{"r.threshold": 1e6}, None, {"r.threshold": 1e6}, {"r.threshold": 1e6}]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_steering_one_row_leaves_the_other_rows_identical(tiny, arch):
    loaded, pack, baseline = tiny if arch == "llama" else with_pack_and_baseline(build_tiny_model(arch, 64, 4, seed=3))
    policy = always("steer", steer={"method": "add", "strength": 2.0, "relative": True})
    guard = Guard(pack, policy)
    out = guarded_generate(loaded, PROMPTS, guard, max_new_tokens=NEW_TOKENS, overrides=ONLY_ROW_1)
    assert out[1].token_ids != baseline[1].token_ids and out[1].verdict["steered"]
    for i in (0, 2, 3):
        assert out[i].token_ids == baseline[i].token_ids and out[i].text == baseline[i].text
        assert not out[i].verdict["steered"] and out[i].actions == []
    assert out[1].actions == ["steer"] and guard.active_requests() == 0


def test_zero_strength_add_is_identity_even_when_it_fires(tiny):
    loaded, pack, baseline = tiny
    guard = Guard(pack, always("steer", steer={"method": "add", "strength": 0.0}))
    out = guarded_generate(loaded, PROMPTS, guard, max_new_tokens=NEW_TOKENS)
    assert all(o.verdict["steered"] for o in out)
    assert [o.token_ids for o in out] == [b.token_ids for b in baseline]


def test_stop_ends_only_its_row(tiny):
    loaded, pack, baseline = tiny
    out = guarded_generate(loaded, PROMPTS, Guard(pack, always("stop")), max_new_tokens=NEW_TOKENS,
                           overrides=ONLY_ROW_1)
    assert out[1].token_ids == [] and out[1].text == "" and out[1].verdict["stopped"]
    for i in (0, 2, 3):
        assert out[i].token_ids == baseline[i].token_ids and not out[i].verdict["stopped"]


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
def test_a_raising_guard_is_counted_and_generation_completes(tiny, mode, monkeypatch):
    loaded, pack, baseline = tiny
    registry = CollectorRegistry()
    policy = Policy.model_validate({"on_error": mode, "rules": [
        {"name": "r", "axis": "refusal", "score": "prompt", "threshold": 2.0, "action": "flag"}]})
    guard = Guard(pack, policy, GuardMetrics("tiny", registry))

    def broken(hidden):
        raise RuntimeError("boom")

    monkeypatch.setattr(guard.monitor, "score", broken)
    out = guarded_generate(loaded, PROMPTS, guard, max_new_tokens=NEW_TOKENS)
    errors = registry.get_sample_value("axisguard_errors_total", {"model_name": "tiny", "stage": "score"})
    assert errors is not None and errors >= 1
    assert all(o.verdict["errors"] >= 1 for o in out)
    if mode == "fail_open":
        assert [o.token_ids for o in out] == [b.token_ids for b in baseline]
        assert not any(o.verdict["stopped"] for o in out)
    else:
        assert all(o.token_ids == [] and o.verdict["stopped"] and "stop" in o.actions for o in out)


def test_prompt_score_matches_extraction_at_the_same_layer(tiny):
    """Hook layer convention + left padding: the guard's prompt z equals the extracted last-token z."""
    loaded, pack, _ = tiny
    guard = Guard(pack, Policy.model_validate({"rules": []}))
    out = guarded_generate(loaded, PROMPTS, guard, max_new_tokens=2)
    acts = torch.tensor(extract_activations(loaded, PROMPTS, [pack.layer], progress=False)[pack.layer])
    expected = z_scores(acts, torch.tensor(pack.anchor_mean), torch.tensor(pack.vectors),
                        torch.tensor(pack.score_offset), torch.tensor(pack.score_scale))
    got = torch.tensor([[o.verdict["scores"][a]["prompt"] for a in pack.axis_names] for o in out])
    assert torch.allclose(got, expected, atol=2e-3)


def test_per_axis_layers_score_each_axis_at_its_own_layer(tiny):
    """A pack reading its three axes at layers 0, 2 and 3: the generate path hooks all three, and each
    axis' prompt z equals the extracted last-token z at that axis' layer (with that layer's centring)."""
    loaded, pack, _ = tiny
    layers = [0, 2, 3]
    acts = extract_activations(loaded, ANCHORS + PROMPTS, layers, progress=False)
    means = np.stack([acts[layer][: len(ANCHORS)].mean(0) for layer in layers]).astype(np.float32)
    offset, scale = [], []
    for k, layer in enumerate(layers):
        cos = z_scores(acts[layer][: len(ANCHORS)].astype(np.float64), means[k], pack.vectors[k:k + 1], 0.0, 1.0)
        offset.append(cos.mean())
        scale.append(cos.std())
    per_axis = dataclasses.replace(pack, axis_layers=layers, axis_anchor_mean=means, anchor_mean=means[0],
                                   score_offset=np.array(offset, np.float32), score_scale=np.array(scale, np.float32))
    guard = Guard(per_axis, Policy.model_validate({"rules": []}))
    assert guard.layers == layers
    out = guarded_generate(loaded, PROMPTS, guard, max_new_tokens=2)
    got = np.array([[o.verdict["scores"][a]["prompt"] for a in pack.axis_names] for o in out])
    for k, layer in enumerate(layers):
        expected = z_scores(acts[layer][len(ANCHORS):], means[k], pack.vectors[k:k + 1], offset[k], scale[k])[:, 0]
        np.testing.assert_allclose(got[:, k], expected, atol=2e-3)


def test_apply_removes_its_hooks(tiny):
    loaded, pack, baseline = tiny
    guard = Guard(pack, always("steer", steer={"method": "add", "strength": 5.0, "relative": True}))
    with apply(loaded.model, guard):
        pass
    assert guarded_generate(loaded, PROMPTS[:1], None, max_new_tokens=NEW_TOKENS)[0].token_ids == baseline[0].token_ids


def test_cli_generate_compare_json(tmp_path):
    loaded = build_tiny_model("llama", 64, num_layers=4, seed=5, save_to=tmp_path / "model")
    pack_dir = pack_for(loaded).save(tmp_path / "pack")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"rules": [
        {"name": "r", "axis": "refusal", "score": "prompt", "threshold": -1e6, "action": "steer",
         "steer": {"method": "add", "strength": 2.0, "relative": True}},
        {"name": "ghost", "axis": "privacy", "threshold": 1.0}]}))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"text": p}) for p in PROMPTS[:2]) + "\n" + json.dumps({"prompt": "hi"}))
    out = tmp_path / "out.jsonl"
    runner = CliRunner()
    result = runner.invoke(cli, ["generate", "--model", str(tmp_path / "model"), "--pack", str(pack_dir),
                                 "--policy", str(policy), "--compare", "--max-new-tokens", "6",
                                 "--prompts-file", str(prompts), "--json", str(out)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == PROMPTS[:2] + ["hi"]
    for r in records:
        assert set(r) == {"prompt", "guarded", "unguarded"}
        assert {"text", "actions", "scores"} <= set(r["guarded"]) and r["guarded"]["actions"] == ["steer"]
        assert set(r["guarded"]["scores"]) == {"refusal", "toxicity", "sycophancy"}
        assert r["guarded"]["text"] != r["unguarded"]["text"]
    both = runner.invoke(cli, ["generate", "--model", str(tmp_path / "model"), "--pack", str(pack_dir),
                               "--prompts-file", str(prompts), "hello"])
    assert both.exit_code == 2 and "exactly one" in both.output
    wrong = random_pack(hidden_size=32, num_layers=4).save(tmp_path / "wrong")
    mismatch = runner.invoke(cli, ["generate", "--model", str(tmp_path / "model"), "--pack", str(wrong), "hi"])
    assert mismatch.exit_code == 2 and "hidden size" in mismatch.output


@pytest.mark.slow
def test_per_row_isolation_on_smollm2():
    from integrations.model_zoo import is_pulled

    if not is_pulled("smollm2-135m"):
        pytest.skip("smollm2-135m is not pulled (`axisguard models pull smollm2-135m`)")
    from integrations.hf_loading import load_model

    loaded = load_model("smollm2-135m", pull_missing=False)
    pack = pack_for(loaded, layer=loaded.num_layers * 3 // 4)
    prompts = ["How do I kill a Python process?", "Name three colours.", "Write one sentence about the sea."]
    baseline = guarded_generate(loaded, prompts, None, max_new_tokens=12)
    guard = Guard(pack, always("steer", steer={"method": "add", "strength": 0.5, "relative": True}))
    out = guarded_generate(loaded, prompts, guard, max_new_tokens=12,
                           overrides=[{"r.threshold": 1e6}, None, {"r.threshold": 1e6}])
    assert out[1].token_ids != baseline[1].token_ids
    assert out[0].token_ids == baseline[0].token_ids and out[2].token_ids == baseline[2].token_ids
    assert np.isfinite(out[1].verdict["scores"]["refusal"]["prompt"])
