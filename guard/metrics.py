"""Prometheus metrics of the runtime guard (prometheus-client).

Names start with ``axisguard_``, use base units and ``_total`` for counters; every series carries
``model_name`` (like vLLM's own metrics) and otherwise only bounded labels: ``axis`` (the pack's
axes), ``action`` (observe/flag/steer/stop, would_steer/would_stop in shadow mode), ``rule`` (a
rule name of the loaded policy; requests cannot add rules), ``method`` (add/ablate/clamp), ``phase``
(prompt/generation), ``stage`` (where a guard error happened), ``outcome``. Never a request id.

=====================================  =========  ============================================
metric                                 type       meaning
=====================================  =========  ============================================
axisguard_token_score                  histogram  z-score of every scored token, per axis
axisguard_actions_total                counter    rules fired, per axis, action and rule
axisguard_steered_tokens_total         counter    token rows steered, per steering axis/method
axisguard_tokens_scored_total          counter    token rows scored, per phase
axisguard_requests_finished_total      counter    finished requests, per outcome
axisguard_errors_total                 counter    guard errors caught (fail-open/closed), per stage
axisguard_scoring_seconds              histogram  host time spent in the guard per forward step
axisguard_requests_active              gauge      requests holding guard state
axisguard_drift                        gauge      RMS z-score over axes and recent tokens
axisguard_pack_info                    gauge      1, labelled with the loaded pack's description
axisguard_policy_info                  gauge      1 for the policy in force (name, hash); 0 once replaced
axisguard_policy_reloads_total         counter    live policy reloads, per result (applied/refused)
=====================================  =========  ============================================

Token counts cover computed tokens: with vLLM's prefix caching, a cached prefix is not computed, so
its tokens are neither scored nor counted (the last prompt token always is; see
``integrations/vllm/prefix_cache.py``).

``axisguard_drift`` needs no labels (ground truth): z-scores are in units of the target model's own
anchor spread, so on anchor-like traffic the RMS z is about 1; a sustained rise means live traffic
sits farther from the anchor pool than the anchors sit from each other (new domain, prompt attack
wave, or a pack that no longer fits the served weights).

Multiprocess: with ``PROMETHEUS_MULTIPROC_DIR`` set before ``prometheus_client`` is imported, the
same objects write to the shared directory (gauges use multiprocess-safe modes: ``livesum`` for
active requests, ``mostrecent`` for drift, ``max`` for the info gauge); the server exposes them with
``prometheus_client.multiprocess.MultiProcessCollector``. Tests pass a private ``CollectorRegistry``.

The guard accumulates score histograms on the device and flushes them here in bulk
(``observe_scores``), so the per-step path never loops over tokens in Python.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from guard.step_metrics import MetricTotals

INF = math.inf
Z_BUCKETS: tuple[float, ...] = (-4.0, -3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, INF)
SECONDS_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, INF,
)
ERROR_STAGES: tuple[str, ...] = ("start", "score", "policy", "steer", "metrics", "finish")


@dataclass
class _Families:
    token_score: Histogram
    actions: Counter
    steered_tokens: Counter
    tokens_scored: Counter
    requests_finished: Counter
    errors: Counter
    scoring_seconds: Histogram
    requests_active: Gauge
    drift: Gauge
    pack_info: Gauge
    policy_info: Gauge
    policy_reloads: Counter


# Metric objects are registered once per registry; GuardMetrics instances bind a model name to them.
_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()


def _families(registry: CollectorRegistry) -> _Families:
    key = registry
    if key not in _FAMILIES:
        m = ("model_name",)
        _FAMILIES[key] = _Families(
            token_score=Histogram(
                "axisguard_token_score", "Axis z-score of each scored token (anchor standard deviations)",
                m + ("axis",), buckets=Z_BUCKETS, registry=registry,
            ),
            actions=Counter(
                "axisguard_actions", "Policy rules fired, by axis, action (would_steer/would_stop in shadow mode) "
                "and rule", m + ("axis", "action", "rule"),
                registry=registry,
            ),
            steered_tokens=Counter(
                "axisguard_steered_tokens", "Token rows counter-steered, by steering axis and method",
                m + ("axis", "method"), registry=registry,
            ),
            tokens_scored=Counter(
                "axisguard_tokens_scored", "Token rows scored by the guard, by phase", m + ("phase",),
                registry=registry,
            ),
            requests_finished=Counter(
                "axisguard_requests_finished", "Requests finished, by strongest guard outcome",
                m + ("outcome",), registry=registry,
            ),
            errors=Counter(
                "axisguard_errors", "Errors caught inside the guard, by stage", m + ("stage",), registry=registry,
            ),
            scoring_seconds=Histogram(
                "axisguard_scoring_seconds", "Host time spent in the guard per forward step",
                m, buckets=SECONDS_BUCKETS, registry=registry,
            ),
            requests_active=Gauge(
                "axisguard_requests_active", "Requests currently holding guard state", m,
                multiprocess_mode="livesum", registry=registry,
            ),
            drift=Gauge(
                "axisguard_drift",
                "RMS z-score over axes and recently scored tokens (about 1 on anchor-like traffic)",
                m, multiprocess_mode="mostrecent", registry=registry,
            ),
            pack_info=Gauge(
                "axisguard_pack_info", "The loaded axis pack (value 1)",
                m + ("pack_model", "axes", "layer", "sources", "method"),
                multiprocess_mode="max", registry=registry,
            ),
            policy_info=Gauge(
                "axisguard_policy_info", "The policy in force (value 1; a replaced one reads 0)",
                m + ("name", "hash"), multiprocess_mode="mostrecent", registry=registry,
            ),
            policy_reloads=Counter(
                "axisguard_policy_reloads", "Live policy reloads, by result (applied, refused)",
                m + ("result",), registry=registry,
            ),
        )
    return _FAMILIES[key]


def _observe_bulk(child: Any, counts: Sequence[float], total: float, bounds: Sequence[float]) -> None:
    """Add pre-bucketed observations to a histogram child (``counts[i]`` values in bucket i)."""
    buckets = getattr(child, "_buckets", None)
    value_sum = getattr(child, "_sum", None)
    if buckets is not None and value_sum is not None and len(buckets) == len(counts):
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
        value_sum.inc(total)
        return
    # Fallback for a prometheus-client without those internals: one observe per value, at the bound.
    for i, n in enumerate(counts):  # pragma: no cover - depends on the library version
        value = bounds[i] if math.isfinite(bounds[i]) else bounds[i - 1]
        for _ in range(int(n)):
            child.observe(value)


class GuardMetrics:
    """The guard's metrics for one served model (``model_name`` label)."""

    z_buckets: tuple[float, ...] = Z_BUCKETS

    def __init__(self, model_name: str = "", registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self.model_name = model_name
        self._f = _families(self.registry)

    def set_pack(self, pack: Any) -> None:
        """Publish the loaded pack (axes, layer, sources, reconstruction method) as an info gauge."""
        self._f.pack_info.labels(
            self.model_name, pack.model.name, ",".join(pack.axis_names), ",".join(map(str, pack.score_layers)),
            ",".join(pack.sources), pack.method,
        ).set(1)

    def observe_scores(self, axis: str, bucket_counts: Sequence[float], total: float) -> None:
        """Bulk-add z-scores of one axis, already bucketed with ``z_buckets`` (non-cumulative counts)."""
        _observe_bulk(self._f.token_score.labels(self.model_name, axis), bucket_counts, total, self.z_buckets)

    def inc_action(self, axis: str, action: str, rule: str = "", n: int = 1) -> None:
        """``rule`` is a rule name of the loaded policy (bounded: clients cannot add rules)."""
        self._f.actions.labels(self.model_name, axis, action, rule).inc(n)

    def inc_steered_tokens(self, axis: str, method: str, n: int) -> None:
        if n:
            self._f.steered_tokens.labels(self.model_name, axis, method).inc(n)

    def inc_tokens(self, phase: str, n: int) -> None:
        if n:
            self._f.tokens_scored.labels(self.model_name, phase).inc(n)

    def inc_finished(self, outcome: str) -> None:
        self._f.requests_finished.labels(self.model_name, outcome).inc()

    def inc_error(self, stage: str) -> None:
        self._f.errors.labels(self.model_name, stage if stage in ERROR_STAGES else "score").inc()

    def observe_step_seconds(self, seconds: float) -> None:
        self._f.scoring_seconds.labels(self.model_name).observe(seconds)

    def set_active(self, n: int) -> None:
        self._f.requests_active.labels(self.model_name).set(n)

    def set_policy(self, name: str, digest: str, previous: tuple[str, str] | None = None) -> None:
        """Publish the policy in force; the one it replaced reads 0 from now on."""
        if previous is not None and previous != (name, digest):
            self._f.policy_info.labels(self.model_name, *previous).set(0)
        self._f.policy_info.labels(self.model_name, name, digest).set(1)

    def inc_policy_reload(self, result: str) -> None:
        self._f.policy_reloads.labels(self.model_name, result).inc()

    def set_drift(self, value: float) -> None:
        self._f.drift.labels(self.model_name).set(value)

    def push_totals(self, totals: MetricTotals, axis_names: Sequence[str], steered: Sequence[tuple[str, str, int]]) -> None:
        """One flush of the guard's device-side accumulators (``guard.step_metrics``): score histograms,
        token counts, steered tokens per (axis, method) and the drift gauge (RMS z over all axes)."""
        for i, axis in enumerate(axis_names):
            if any(totals.buckets[i]):
                self.observe_scores(axis, totals.buckets[i], totals.sums[i])
        self.inc_tokens("prompt", totals.prompt_tokens)
        self.inc_tokens("generation", totals.generated_tokens)
        for axis, method, n in steered:
            self.inc_steered_tokens(axis, method, n)
        scored = totals.prompt_tokens + totals.generated_tokens
        if scored:
            self.set_drift(math.sqrt(totals.squares / (scored * len(axis_names))))


def multiprocess_exposition() -> bytes:
    """What a server's /metrics would show under ``PROMETHEUS_MULTIPROC_DIR`` (all processes merged)."""
    from prometheus_client import generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return generate_latest(registry)
