"""Prometheus metrics: names, labels and values after real guard steps, bulk histograms equal to
per-value ones, `promtool check metrics` on the exposition, and PROMETHEUS_MULTIPROC_DIR mode."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from guard.metrics import Z_BUCKETS, GuardMetrics
from guard.policy import Policy
from guard.runtime import Guard, RowMap
from tests.pack_factory import hidden_for_z, random_pack

PACK = random_pack()
PROMTOOL = shutil.which("promtool")
REPO = Path(__file__).resolve().parents[1]
POLICY = Policy.model_validate({"rules": [
    {"name": "harm", "axis": "refusal", "score": "prompt", "threshold": 2.0, "action": "steer",
     "steer": {"method": "add", "strength": 1.0}},
    {"name": "tox", "axis": "toxicity", "score": "generation", "threshold": 1.0, "action": "flag"},
]})


def promtool_check(exposition: bytes) -> None:
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def run_guard(registry: CollectorRegistry) -> Guard:
    guard = Guard(PACK, POLICY, GuardMetrics("tiny-model", registry))
    prompt = RowMap(["a", "b"], torch.tensor([0, 0, 1, 1]), torch.ones(4, dtype=torch.bool))
    guard.on_hidden(PACK.layer, hidden_for_z(PACK, [[0, 0, 0], [3, 0, 0], [0, 0, 0], [0.5, 0, 0]]), prompt)
    decode = RowMap(["a", "b"], torch.tensor([0, 1]), torch.zeros(2, dtype=torch.bool))
    for _ in range(3):
        guard.on_hidden(PACK.layer, hidden_for_z(PACK, [[0, 0, 0], [0, 2.5, 0]]), decode)
    guard.finish_request("a")
    guard.finish_request("b")
    guard.flush_metrics()
    return guard


def test_guard_metrics_names_labels_and_values():
    registry = CollectorRegistry()
    run_guard(registry)
    value = registry.get_sample_value
    m = {"model_name": "tiny-model"}
    assert value("axisguard_tokens_scored_total", {**m, "phase": "prompt"}) == 4
    assert value("axisguard_tokens_scored_total", {**m, "phase": "generation"}) == 6
    assert value("axisguard_actions_total", {**m, "axis": "refusal", "action": "steer", "rule": "harm"}) == 1
    assert value("axisguard_actions_total", {**m, "axis": "toxicity", "action": "flag", "rule": "tox"}) == 1
    assert value("axisguard_steered_tokens_total", {**m, "axis": "refusal", "method": "add"}) == 4  # 1 prompt + 3
    assert value("axisguard_requests_finished_total", {**m, "outcome": "steered"}) == 1
    assert value("axisguard_requests_finished_total", {**m, "outcome": "flagged"}) == 1
    assert value("axisguard_token_score_count", {**m, "axis": "refusal"}) == 10
    assert value("axisguard_token_score_bucket", {**m, "axis": "toxicity", "le": "2.0"}) == 7
    # z-scores can be negative, so (per OpenMetrics) the client exposes no _sum for this histogram
    assert value("axisguard_token_score_sum", {**m, "axis": "refusal"}) is None
    assert value("axisguard_scoring_seconds_count", m) == 4
    assert value("axisguard_requests_active", m) == 0
    assert value("axisguard_pack_info", {**m, "pack_model": "tiny", "axes": "refusal,toxicity,sycophancy",
                                         "layer": "2", "sources": "source-a,source-b", "method": "test"}) == 1
    drift = value("axisguard_drift", m)
    assert drift is not None and drift > 0
    # bounded label sets only: never a request id
    text = generate_latest(registry).decode()
    assert '"a"' not in text and '"b"' not in text and "request" not in text.replace("requests_", "")


def test_bulk_histogram_equals_per_value_observations():
    values = torch.tensor([-5.0, -1.0, -0.2, 0.0, 0.49, 0.5, 1.7, 2.0, 5.9, 7.0, 100.0])
    bounds = torch.tensor([b for b in Z_BUCKETS if b != float("inf")])
    counts = torch.bincount(torch.bucketize(values, bounds), minlength=len(Z_BUCKETS)).tolist()
    bulk_registry, plain_registry = CollectorRegistry(), CollectorRegistry()
    GuardMetrics("m", bulk_registry).observe_scores("refusal", counts, float(values.sum()))
    reference = Histogram("axisguard_token_score", "x", ["model_name", "axis"], buckets=Z_BUCKETS,
                          registry=plain_registry).labels("m", "refusal")
    for v in values.tolist():
        reference.observe(v)
    for le in ["-4.0", "-1.0", "0.0", "0.5", "2.0", "6.0", "+Inf"]:
        labels = {"model_name": "m", "axis": "refusal", "le": le}
        assert (bulk_registry.get_sample_value("axisguard_token_score_bucket", labels)
                == plain_registry.get_sample_value("axisguard_token_score_bucket", labels)), le


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`)")
def test_exposition_passes_promtool():
    registry = CollectorRegistry()
    run_guard(registry)
    promtool_check(generate_latest(registry))


def test_shadow_mode_counts_what_it_would_do_and_changes_nothing():
    registry = CollectorRegistry()
    guard = Guard(PACK, POLICY.model_copy(update={"mode": "shadow"}), GuardMetrics("tiny-model", registry))
    prompt = RowMap(["a"], torch.tensor([0, 0]), torch.ones(2, dtype=torch.bool))
    delta = guard.on_hidden(PACK.layer, hidden_for_z(PACK, [[0, 0, 0], [3, 0, 0]]), prompt)
    verdict = guard.finish_request("a")
    guard.flush_metrics()
    assert delta is None or not delta.any()
    assert verdict is not None and verdict.would_steer and not verdict.steered and verdict.mode == "shadow"
    assert verdict.actions == ["would_steer"] and verdict.fired[0]["action"] == "would_steer"
    value = registry.get_sample_value
    m = {"model_name": "tiny-model", "axis": "refusal", "rule": "harm"}
    assert value("axisguard_actions_total", {**m, "action": "would_steer"}) == 1
    assert value("axisguard_actions_total", {**m, "action": "steer"}) is None
    assert value("axisguard_steered_tokens_total", {"model_name": "tiny-model", "axis": "refusal", "method": "add"}) \
        is None


def test_multiprocess_directory_mode(tmp_path):
    """Two processes write under PROMETHEUS_MULTIPROC_DIR; the merged view sums their counters."""
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from prometheus_client import CollectorRegistry
        from tests.test_metrics import run_guard
        run_guard(CollectorRegistry())
    """)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script, str(REPO)], env=env, check=True, timeout=120, cwd=REPO)
    merged = subprocess.run(
        [sys.executable, "-c", "from guard.metrics import multiprocess_exposition; import sys; "
         "sys.stdout.buffer.write(multiprocess_exposition())"],
        env=env, check=True, timeout=120, cwd=REPO, capture_output=True,
    ).stdout
    text = merged.decode()
    assert 'axisguard_tokens_scored_total{model_name="tiny-model",phase="prompt"} 8.0' in text
    assert 'axisguard_actions_total{action="steer",axis="refusal",model_name="tiny-model",rule="harm"} 2.0' in text
    assert "axisguard_drift{" in text and "axisguard_pack_info{" in text
    assert 'pid="' not in text  # gauges use merge modes that do not fan out per process
    if PROMTOOL is not None:
        promtool_check(merged)
